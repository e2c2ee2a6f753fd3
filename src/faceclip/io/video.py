"""Video in and out through PyAV (FFmpeg's libraries, bundled in the ``av`` wheels).

- :func:`probe_video`: what a clip is (frame size, rate, frame count, audio) or a clear
  :class:`~faceclip.errors.InputError`; a folder of images is a clip too (sorted by name in
  natural order, ``frame2`` before ``frame10``, at a given rate).
- :func:`iter_frames`: ``(index, time_s, rgb)`` for every frame, decoded one at a time (a long
  clip never sits in memory).
- :class:`VideoWriter`: H.264 (``.mp4``, ``.mov``, ``.mkv``), VP9 (``.webm``) or MPEG-4 Part 2
  (``.avi``) from RGB frames, written to a temporary file renamed into place when complete, and
  optionally the audio of another clip copied in without re-encoding (``audio_from``). Frames
  may carry their source time stamps (kept to the millisecond, so a variable frame rate and
  the audio's sync survive; AVI is written at a constant rate).
- :func:`write_frames`: a whole list of frames at once.

Frame times come from the stream's presentation time stamps (variable frame rates are kept);
rotation metadata of phone videos is not applied.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from faceclip.errors import InputError
from faceclip.io.outputs import OutputError

__all__ = ["VIDEO_SUFFIXES", "VideoInfo", "VideoWriter", "iter_frames", "probe_video", "write_frames"]

#: File suffixes read as video (anything FFmpeg opens is tried; these are what folders list).
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".avi", ".mkv", ".m4v"})
#: Codec per output suffix.
_CODECS = {".mp4": "libx264", ".mov": "libx264", ".mkv": "libx264", ".m4v": "libx264", ".webm": "libvpx-vp9",
           ".avi": "mpeg4"}
#: Largest frame accepted (pixels): 8K.
MAX_FRAME_PIXELS = 7680 * 4320


@dataclass
class VideoInfo:
    """What :func:`probe_video` found.

    Attributes:
        path: the file or folder.
        kind: ``"video"`` or ``"frames"`` (a folder of images).
        width, height: frame size in pixels.
        fps: average frame rate (frames per second).
        n_frames: number of frames (from the container; may be an estimate, or 0 if unknown).
        has_audio: the file has an audio stream.
        frame_files: the images of a ``"frames"`` clip, in order.
    """

    path: Path
    kind: str
    width: int
    height: int
    fps: float
    n_frames: int
    has_audio: bool = False
    frame_files: tuple[Path, ...] = ()


def _natural_key(p: Path) -> list:
    return [int(s) if s.isdigit() else s.lower() for s in re.split(r"(\d+)", p.name)]


def _open(path: Path):
    import av

    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable video ({exc})",
                         hint="give an .mp4, .mov, .webm or .avi file, or a folder of frames") from exc


def _video_stream(container):
    """The clip's main video stream (not an attached cover picture), or InputError."""
    streams = [v for v in container.streams.video if not (v.disposition & _ATTACHED_PIC)]
    if not streams:
        raise InputError(f"{container.name}: has no video stream")
    return max(streams, key=lambda v: (v.codec_context.width or 0) * (v.codec_context.height or 0))


_ATTACHED_PIC = 0x0400  # AV_DISPOSITION_ATTACHED_PIC


def probe_video(path: str | os.PathLike[str], fps: float = 30.0) -> VideoInfo:
    """Describe a clip without decoding it.

    Args:
        path: a video file, or a folder of image frames.
        fps: the frame rate of a folder of frames (files have their own).

    Raises:
        InputError: missing path, no video stream, unreadable file, empty folder, a frame too
        large, or a non-positive ``fps``.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if not np.isfinite(fps) or fps <= 0:
        raise InputError(f"frame rate must be positive, got {fps}")
    if p.is_dir():
        from faceclip.io.images import IMAGE_SUFFIXES, load_image

        files = tuple(sorted((f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                             key=_natural_key))
        if not files:
            raise InputError(f"{p}: the folder holds no image frames",
                             hint="frames must be " + ", ".join(sorted(IMAGE_SUFFIXES)) + " files")
        first = load_image(files[0])
        return VideoInfo(p, "frames", first.shape[1], first.shape[0], float(fps), len(files), False, files)
    if not p.is_file():
        raise InputError(f"{p}: not a regular file or folder")
    with _open(p) as container:
        vs = _video_stream(container)
        w, h = int(vs.codec_context.width or 0), int(vs.codec_context.height or 0)
        if w < 1 or h < 1:
            raise InputError(f"{p}: the video stream has no frame size")
        if w * h > MAX_FRAME_PIXELS:
            raise InputError(f"{p}: frames of {w} x {h} are larger than 8K")
        rate = vs.average_rate or vs.guessed_rate
        rate_f = float(rate) if rate else 0.0
        if not np.isfinite(rate_f) or rate_f <= 0:
            rate_f = float(fps)
        n = int(vs.frames or 0)
        if n == 0 and vs.duration is not None and vs.time_base is not None:
            n = int(round(float(vs.duration * vs.time_base) * rate_f))
        return VideoInfo(p, "video", w, h, rate_f, n, bool(container.streams.audio))


def iter_frames(info: VideoInfo, bad: list | None = None) -> Iterator[tuple[int, float, np.ndarray | None]]:
    """Yield ``(index, time_s, rgb)`` for each frame, ``rgb`` (H, W, 3) uint8.

    A file's frames keep their size; a folder's frames must all have the first one's size.

    Args:
        bad: None (strict): any unreadable frame raises. A list: unreadable frames are recorded
            in it as ``(index, message)`` and the clip goes on; a folder's unreadable or
            wrongly sized image is yielded as ``rgb=None`` at its index (its time is kept), a
            video packet that cannot be decoded is skipped (the decoder's next frame follows).

    Raises:
        InputError: an unreadable frame in strict mode, or a file none of whose frames decodes.
    """
    if info.kind == "frames":
        from faceclip.io.images import load_image

        for i, f in enumerate(info.frame_files):
            try:
                rgb = load_image(f)
                if rgb.shape[:2] != (info.height, info.width):
                    raise InputError(f"{f}: frame of {rgb.shape[1]} x {rgb.shape[0]}, the clip's first frame is "
                                     f"{info.width} x {info.height}", hint="all frames of a folder must have one size")
            except InputError as exc:
                if bad is None:
                    raise
                bad.append((i, exc.message))
                rgb = None
            yield i, i / info.fps, rgb
        return
    import av

    with _open(info.path) as container:
        vs = _video_stream(container)
        vs.thread_type = "AUTO"
        i = 0
        packets = container.demux(vs)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.error.FFmpegError as exc:  # a truncated or damaged container: the clip ends here
                if bad is None or i == 0:
                    raise InputError(f"{info.path}: reading stopped at frame {i} ({exc})") from exc
                bad.append((i, f"the file cannot be read past frame {i - 1} ({exc}); the clip ends there"))
                break
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                if bad is None:
                    raise InputError(f"{info.path}: decoding stopped at frame {i} ({exc})") from exc
                bad.append((i, f"undecodable data after frame {i - 1} skipped ({exc})"))
                continue
            for frame in frames:
                t = float(frame.pts * vs.time_base) if frame.pts is not None and vs.time_base else i / info.fps
                yield i, t, frame.to_ndarray(format="rgb24")
                i += 1
        if i == 0:
            raise InputError(f"{info.path}: no frame could be decoded")


class VideoWriter:
    """Write RGB frames to a video file, atomically; optionally copy another clip's audio.

    Use as a context manager: the file appears at ``path`` only when the block ends without an
    exception. Frames must all have the size of the first (odd sizes are padded by one pixel:
    H.264 needs even sizes).

    Args:
        path: output file; its suffix picks the codec (see ``_CODECS``).
        fps: frame rate.
        audio_from: a video file whose audio stream is copied (packets, no re-encoding), or None.
        crf: H.264 / VP9 quality (lower is better; 18 is visually lossless, 23 the default).
    """

    def __init__(self, path: str | os.PathLike[str], fps: float, audio_from: str | os.PathLike[str] | None = None,
                 crf: int = 23, codec: str | None = None) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if codec is None and suffix not in _CODECS:
            raise OutputError(f"{self.path}: unknown video type", hint="use .mp4, .mov, .mkv, .webm or .avi")
        self.codec = codec or _CODECS[suffix]
        self.fps = float(fps)
        self.crf = int(crf)
        self.audio_from = Path(audio_from) if audio_from else None
        self._ctx = None
        self._out = None
        self._stream = None
        self._audio_in = None
        self._audio_out = None
        self._size: tuple[int, int] | None = None
        self.n_frames = 0
        #: Audio past this time (source seconds) is not copied (the video was cut short); None: all.
        self.max_time_s: float | None = None
        #: Source time of the first frame (set by the first timed :meth:`write`): subtracted from
        #: the copied audio's time stamps too.
        self.time_offset_s: float | None = None
        self._timed = self.codec != "mpeg4"  # AVI (MPEG-4 Part 2) stays at a constant rate
        self._last_pts = -1

    def __enter__(self) -> "VideoWriter":
        from faceclip.io.files import atomic_path

        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        import av

        self._out = av.open(str(tmp), mode="w", format=_format_for(self.path.suffix.lower()))
        if self.audio_from is not None:
            src = av.open(str(self.audio_from), mode="r")
            if src.streams.audio:
                self._audio_in = src
                try:
                    self._audio_out = self._out.add_stream_from_template(src.streams.audio[0])
                except (ValueError, av.error.FFmpegError):  # codec the container cannot hold
                    src.close()
                    self._audio_in = self._audio_out = None
            else:
                src.close()
        return self

    def _open_stream(self, w: int, h: int) -> None:
        from fractions import Fraction

        rate = Fraction(self.fps).limit_denominator(1001)
        s = self._out.add_stream(self.codec, rate=rate)
        s.width, s.height = w + (w % 2), h + (h % 2)
        s.pix_fmt = "yuv420p"
        if self._timed:  # millisecond time stamps: a variable frame rate is kept
            s.codec_context.time_base = Fraction(1, 1000)
        if self.codec in ("libx264", "libvpx-vp9"):
            s.options = {"crf": str(self.crf), **({"preset": "veryfast"} if self.codec == "libx264" else
                                                  {"b:v": "0", "deadline": "realtime", "cpu-used": "8"})}
        else:  # MPEG-4 Part 2: constant quality (qscale 3)
            s.options = {"flags": "+qscale", "global_quality": str(3 * 118)}
        self._stream = s
        self._size = (w, h)

    def write(self, rgb: np.ndarray, time_s: float | None = None) -> None:
        """Append one (H, W, 3) uint8 frame, shown at ``time_s`` (seconds; the first frame's time
        becomes 0, and the copied audio is shifted alike) or, without times, at the frame rate."""
        import av
        from fractions import Fraction

        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"frames must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
        h, w = rgb.shape[:2]
        if self._stream is None:
            self._open_stream(w, h)
        if (w, h) != self._size:
            raise ValueError(f"frame of {w} x {h} after frames of {self._size[0]} x {self._size[1]}")
        if w % 2 or h % 2:
            rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        if self._timed:
            if time_s is None:
                pts = int(round(self.n_frames * 1000.0 / self.fps))
            else:
                if self.time_offset_s is None:
                    self.time_offset_s = float(time_s)
                pts = int(round((float(time_s) - self.time_offset_s) * 1000.0))
            pts = max(pts, self._last_pts + 1)  # strictly increasing
            self._last_pts = pts
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
        for packet in self._stream.encode(frame):
            self._out.mux(packet)
        self.n_frames += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        import av

        error = (exc_type, exc, tb)
        try:
            if exc_type is None:
                if self._stream is None:
                    raise OutputError(f"{self.path}: no frames to write")
                for packet in self._stream.encode(None):
                    self._out.mux(packet)
                if self._audio_in is not None:
                    shift = self.time_offset_s or 0.0
                    for packet in self._audio_in.demux(self._audio_in.streams.audio[0]):
                        if packet.dts is None or packet.pts is None:
                            continue
                        t = float(packet.pts * packet.time_base)
                        if t < shift or (self.max_time_s is not None and t > self.max_time_s):
                            continue
                        if shift:
                            delta = int(round(shift / packet.time_base))
                            packet.pts, packet.dts = packet.pts - delta, packet.dts - delta
                        packet.stream = self._audio_out
                        self._out.mux(packet)
        except av.error.FFmpegError as e:
            error = (OutputError, OutputError(f"{self.path}: cannot finish writing ({e})"), e.__traceback__)
        except BaseException as e:  # noqa: BLE001 - passed on below, after cleaning up
            error = (type(e), e, e.__traceback__)
        try:
            try:
                if self._audio_in is not None:
                    self._audio_in.close()
            finally:
                self._out.close()
        except Exception as e:  # noqa: BLE001
            if error[0] is None:
                error = (OutputError, OutputError(f"{self.path}: cannot finish writing ({e})"), e.__traceback__)
        finally:
            self._ctx.__exit__(*error)  # renames the file into place only when nothing failed
        if error[0] is not None and error[1] is not exc:
            raise error[1]


def _format_for(suffix: str) -> str | None:
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}.get(suffix)


def write_frames(path: str | os.PathLike[str], frames, fps: float, codec: str | None = None, crf: int = 23,
                 audio_from: str | os.PathLike[str] | None = None) -> Path:
    """Write a sequence of (H, W, 3) uint8 frames as a video file (atomic). Returns the path."""
    with VideoWriter(path, fps, audio_from=audio_from, crf=crf, codec=codec) as w:
        for f in frames:
            w.write(f)
    return Path(path)
