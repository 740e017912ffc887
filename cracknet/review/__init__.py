"""Inspectors in the loop: pick what a person should review tonight, send it to a labelling tool, bring the
verdicts and corrected masks back as labelled trees, and measure the model in the field without bias.

Sits above ``score`` (it reads the results and runs tables through ``table``) and below ``report``.
"""
