"""What a notebook shows: tables (``display``), figures (``plots``), banners, and one view module per notebook.

Display only: every function here renders results the layers below computed, and none
writes a report page. Making the reports (running notebooks, the HTML, the index, the
model card, the inference page, the rehearsal page) is ``cxrutils.publish``.
"""
