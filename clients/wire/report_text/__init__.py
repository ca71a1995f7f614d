"""A report read for people: its derived figures (view.py), how each is written (text.py) and the
terminal table (table.py). `optiserve report` prints the table; the server's report.html
(optimizer_pipeline/report/html.py) shows the same figures."""
