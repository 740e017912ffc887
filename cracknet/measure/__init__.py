"""Measure: the numbers cracknet reports, as plain numpy (no Ray, no torch).

``metrics`` scores probabilities against labels and masks against masks; ``thresholds`` chooses the operating
point a model ships with; ``intervals`` says how sure each figure is (bootstrap over whole photos or
structures); ``geometry`` turns a crack mask into cracks with lengths, widths and severity. Imports only the
core modules.
"""
