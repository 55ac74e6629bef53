"""The voiceprint HTTP service behind ``infer_server.py``: a FastAPI app (``app.create_app``) over
one ``MVectorPredictor`` and the same voiceprint library ``infer_recognition.py`` uses, plus a web
page at ``/``. Nothing is imported here, so the command line can check its arguments before
FastAPI and torch load."""
