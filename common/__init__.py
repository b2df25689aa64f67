"""The bottom layer every other layer may use: atomic, umask-respecting, exclusive outputs and
locks (``retrieval.common.atomic``), the progress callback type (``progress``) and short
listings for one-line errors (``text``). It imports nothing of ours.
"""
