"""``transmed view``: review and correct a segmentation in the browser.

A local web application (Starlette + uvicorn) around NiiVue, the WebGL volume viewer, whose
built bundle is vendored under ``static/niivue/`` (licence and version recorded there), so the
page works offline. Modules, by concept:

- :mod:`.sources`: what PATH holds (a case folder, loose files, a ``transmed predict`` output
  folder, the storage folder of ``transmed serve``) → a list of :class:`ViewCase` (paths only).
- :mod:`.volumes`: one case loaded on demand: every volume on the prediction's grid, in the
  closest-RAS voxel order NiiVue draws in, and the way back to the file's own voxel order.
- :mod:`.saving`: a correction written next to the prediction (NIfTI in the input's label
  values, a DICOM SEG marked as manually corrected, the edit record), optionally queued in the
  node's outbox.
- :mod:`.app`: the HTTP routes, the access token, the path checks; :mod:`.cli`: the command.

It depends only downward (io, data, transforms, service's outbox); nothing imports it.
"""
