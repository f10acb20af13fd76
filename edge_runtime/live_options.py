"""How live sources (cameras, RTSP, GStreamer) ride out outages: the defaults of provq-run's --retries,
--stall-timeout and --live-queue, in a module free of OpenCV so that the command line can show them before cv2 loads.

Reconnect delays double from DEFAULT_BACKOFF_S up to MAX_BACKOFF_S. The cap bounds how long a camera that is back
waits for the next attempt: at most MAX_BACKOFF_S plus one open (about 0.7 s for RTSP through FFmpeg on 127.0.0.1),
so a restarted camera streams again within 5 s of coming back; a refused attempt costs one TCP round trip, so there
is little to save by waiting longer. DEFAULT_RETRIES attempts then span about a minute, an IP camera's reboot.
"""

from __future__ import annotations

MAX_BACKOFF_S = 2.0
DEFAULT_BACKOFF_S = 0.5  # the first reconnect delay
DEFAULT_RETRIES = 30  # reconnect attempts per outage (-1: forever)
DEFAULT_STALL_TIMEOUT_S = 5.0  # no frame for this long: the camera is reopened (also the wait to open it)
DEFAULT_LIVE_QUEUE = 1  # newest frames kept when the consumer falls behind; older ones are dropped and counted
