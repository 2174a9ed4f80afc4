"""Cross-validation of LMTCNN on Ray: one fold per device, a live dashboard, one table.

`python -m scheduler run configs/cv5.yaml`. Only this package knows Ray; it calls the
Ray-free `lmtcnn` package inside each fold's task.
"""
