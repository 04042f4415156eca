"""HTTP service, webcam demo and capture tools. Never imports training/: everything shared lives in gesture_core."""
