"""The demo: ``make demo`` end to end on a local Ray, and the generated surfaces it and the tests use.

``run`` trains, scores a small survey and writes the report; ``synthetic`` draws concrete and road surfaces with
known cracks and exact masks (``python -m cracknet.demo.synthetic``). The top of the house: may import any stage.
"""
