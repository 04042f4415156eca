"""The live demo and its tools, apart from the HTTP service: ``python -m service.webcam`` (demo.py)
recognises gestures from a webcam or a video file, with a local model or the HTTP service;
``python -m service.webcam.capture`` records a dataset. sources.py opens cameras and files,
grabber.py reads frames in a thread, scoring.py turns a frame into class scores, overlay.py draws."""
