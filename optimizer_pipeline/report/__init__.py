"""The report as a page: report.html (html.py) and its plot (plot.py).

The report's model is wire.contract.report; its figures and its text table are wire.report_text,
which the client shares.
"""
