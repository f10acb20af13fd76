"""The file types provq reads frames from, by extension (lower case, with the dot).

OpenCV decodes and encodes every image type listed (``cv2.imread``/``cv2.imwrite``); its FFmpeg backend reads the
video containers. Training's data index, the runtime's folder and glob sources, the export's parity frames and the
runtime's image outputs all use these lists.
"""

from __future__ import annotations

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v")
