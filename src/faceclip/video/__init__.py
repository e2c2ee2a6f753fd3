"""Video: track faces through a clip with one identity each, smooth pose and expression.

``reconstruct_video(path, out_dir, VideoOptions(...))`` is the job behind ``faceclip video``; see
:mod:`faceclip.video.pipeline` for the passes and :mod:`faceclip.video.outputs` for the files.
"""

from faceclip.video.pipeline import TrackResult, VideoOptions, VideoReconstructor, VideoReport, reconstruct_video

__all__ = ["TrackResult", "VideoOptions", "VideoReconstructor", "VideoReport", "reconstruct_video"]
