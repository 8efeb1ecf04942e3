"""Making the reports: ``runner`` (papermill and the index), ``html`` (the HTML with its navigation),
``model_card``, ``inference_page``, ``rehearsal`` (the full-size rehearsal and its page) and
``browser`` (every page checked in headless Chromium).

A notebook and the runner share only the summary file (``cxrutils.summary``).
"""
