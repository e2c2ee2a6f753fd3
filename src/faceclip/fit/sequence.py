"""Fitting a sequence of frames (one tracked face in a video): one identity, per-frame pose and
expression, from 68 landmarks per frame.

The video counterpart of the landmark stage of :class:`faceclip.fit.fitter.Fitter`, with the
same objective (weighted, Cauchy-robust landmark residuals, the sliding jaw contour, Gaussian
priors on the coefficients, blendshape weights kept in [0, 1]) solved by Levenberg-Marquardt
with an analytic Jacobian, and two additions:

- :meth:`SequenceFitter.fit_identity`: **one identity for several frames**, solved jointly
  with each frame's own pose and expression (the unknowns are ``identity + K x (pose,
  expression)``), so a turned frame constrains the profile and a frontal one the widths.
- :meth:`SequenceFitter.fit_frame`: pose and expression of one frame **with the identity
  fixed**, warm-started from the previous frame and pulled toward it by a weak temporal prior
  (``w_temporal_*``), a few iterations: milliseconds per frame.

Units: landmark residuals are measured in hundredths of the face's size in the frame (the
square root of the area of the 68 landmarks' bounding box), so the weights do not depend on
the video's resolution or on how large the face is; translation is solved in cm.

Cameras are OpenCV pinholes in frame pixels (x right, y down, origin at the top-left corner,
pixel centres at +0.5) with the model-to-camera rotation ``diag(1, -1, -1) @ euler(angles)``,
the convention of :class:`faceclip.facemodel.params.FaceParams`.

Example::

    sf = SequenceFitter(model)
    cam = FrameCamera(focal_px=1800.0, width=640, height=480)
    poses = [sf.initial_pose(lm, cam) for lm in keyframe_landmarks]          # (68, 2) each
    identity, poses = sf.fit_identity(keyframe_landmarks, cam, poses)
    pose = sf.fit_frame(landmarks, cam, identity, init=previous, prior=previous)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from faceclip.facemodel.base import FaceModel
from faceclip.fit.contour import build_contour_bands
from faceclip.facemodel.params import MODEL_TO_OPENCV, euler_jacobian_np, euler_matrix_np, matrix_to_euler, pose_from_landmarks
from faceclip.losses import DEFAULT_LANDMARK_WEIGHTS

__all__ = ["FrameCamera", "FramePose", "SequenceConfig", "SequenceFitter", "face_size_px"]

_T_UNIT = 10.0  # translation unknowns in cm


@dataclass
class SequenceConfig:
    """Weights and iteration counts of :class:`SequenceFitter`.

    Landmark residuals are in hundredths of the face size (see the module docstring); the
    landmark, identity and expression weights are those of the photo fitter's landmark stage.
    The temporal weights and the joint identity prior were chosen on synthetic clips of the
    tuning seed 1 (``benchmarks/video.py --seed 1``); the reported figures use seed 0.
    """

    w_landmark: float = 0.4
    #: Identity prior of the joint fit (once, not per keyframe).
    w_identity: float = 0.5
    w_expression: float = 0.5
    #: A causal temporal prior: the pull of a frame's rotation (per radian^2), translation (per
    #: cm^2) and blendshape weights toward ``prior`` (the previous frame's). Off by default: it
    #: lags (tuning seed 1: rotation 20, expression 0.5 raised the posed-vertex error from 3.98
    #: to 4.42 px); the video job smooths without lag instead (zero-phase, whole clip).
    w_temporal_rotation: float = 0.0
    w_temporal_translation: float = 0.0
    w_temporal_expression: float = 0.0
    #: Cauchy scale of the robust landmark weights, in hundredths of the face size.
    robust: float = 5.0
    joint_iterations: int = 25
    frame_iterations: int = 6


@dataclass
class FrameCamera:
    """A pinhole for the frames of one clip: focal in pixels, principal point at the centre."""

    focal_px: float
    width: int
    height: int

    @property
    def centre(self) -> tuple[float, float]:
        return self.width / 2.0, self.height / 2.0

    def intrinsics(self) -> np.ndarray:
        """(3, 3) OpenCV camera matrix."""
        cx, cy = self.centre
        return np.array([[self.focal_px, 0, cx], [0, self.focal_px, cy], [0, 0, 1.0]])


@dataclass
class FramePose:
    """Pose and expression of the face in one frame.

    Attributes:
        angles_rad: (3,) pitch, yaw, roll (the head's rotation in the model frame).
        translation_mm: (3,) OpenCV camera-frame translation (z: distance to the camera).
        expression: (E,) expression coefficients.
    """

    angles_rad: np.ndarray
    translation_mm: np.ndarray
    expression: np.ndarray

    def copy(self) -> "FramePose":
        return FramePose(self.angles_rad.copy(), self.translation_mm.copy(), self.expression.copy())

    def rotation_cv(self) -> np.ndarray:
        """(3, 3) model -> OpenCV camera rotation."""
        return MODEL_TO_OPENCV @ euler_matrix_np(*self.angles_rad)


def face_size_px(landmarks68: np.ndarray) -> float:
    """Square root of the area of the landmarks' bounding box (pixels)."""
    lm = np.asarray(landmarks68, np.float64)
    w, h = np.ptp(lm[:, 0]), np.ptp(lm[:, 1])
    return float(max(np.sqrt(max(w * h, 0.0)), 1.0))


class SequenceFitter:
    """Landmark fitting for the frames of a clip; construct once per face model.

    Works in float64 NumPy on the landmark and contour vertices only (a few hundred): an
    iteration for one frame is a (136 x 59) Jacobian and a 59 x 59 solve.
    """

    def __init__(self, model: FaceModel, config: SequenceConfig | None = None) -> None:
        self.config = config or SequenceConfig()
        self.model = model.to("cpu")
        self.bands = build_contour_bands(self.model)
        m = self.model
        ids = np.unique(np.concatenate([m.landmarks68.numpy(), self.bands.candidates.reshape(-1).numpy()]))
        rows = np.full(m.n_vertices, -1, dtype=np.int64)
        rows[ids] = np.arange(len(ids))
        self.mean = m.mean_mm[ids].double().numpy()  # (N, 3)
        self.id_basis = m.identity_basis_mm[:, ids].double().numpy()  # (I, N, 3)
        self.exp_basis = m.expression_basis_mm[:, ids].double().numpy()  # (E, N, 3)
        self.n_id, self.n_exp = m.n_identity, m.n_expression
        self._id_flat = self.id_basis.reshape(self.n_id, -1)
        self._exp_flat = self.exp_basis.reshape(self.n_exp, -1)
        self.lm_rows = rows[m.landmarks68.numpy()]  # (68,)
        self.slide = self.bands.landmark_ids.numpy()  # (K,) which landmarks slide
        self.cand_rows = rows[self.bands.candidates.numpy()]  # (K, M)
        self.side = self.bands.side.numpy().astype(np.float64)  # (K,)
        w = DEFAULT_LANDMARK_WEIGHTS.double().numpy()
        self.base_w = w / w.sum()
        self.blendshapes = m.expression_range == "blendshape"

    # ------------------------------------------------------------------ geometry

    def identity_points(self, identity: np.ndarray) -> np.ndarray:
        """(N, 3) subset points of the neutral face with this identity."""
        return self.mean + (np.asarray(identity, np.float64) @ self._id_flat).reshape(-1, 3)

    def _points(self, id_pts: np.ndarray, expr: np.ndarray) -> np.ndarray:
        return id_pts + (expr @ self._exp_flat).reshape(-1, 3)

    @staticmethod
    def _rotation(ang: np.ndarray) -> np.ndarray:
        return MODEL_TO_OPENCV @ euler_matrix_np(*ang)

    def landmark_rows(self, X: np.ndarray, ang: np.ndarray, t_mm: np.ndarray, cam: FrameCamera) -> np.ndarray:
        """(68,) subset rows of the 68 landmarks with the contour slid to the silhouette: per
        sliding landmark, the candidate farthest out along the image direction of the model's
        +X axis (:func:`faceclip.fit.contour.select_contour_vertices`, here in NumPy)."""
        R = self._rotation(ang)
        K, M = self.cand_rows.shape
        pts = X[self.cand_rows.reshape(-1)]
        centre = X.mean(0)
        both = np.concatenate([pts, centre[None], (centre + np.array([10.0, 0.0, 0.0]))[None]]) @ R.T + t_mm
        xy = cam.focal_px * both[:, :2] / both[:, 2:3]
        d = xy[-1] - xy[-2]
        d = d / max(np.linalg.norm(d), 1e-9)
        score = (xy[:-2] @ d).reshape(K, M) * self.side[:, None]
        rows = self.lm_rows.copy()
        rows[self.slide] = self.cand_rows[np.arange(K), score.argmax(1)]
        return rows

    def _frame_terms(self, X_rows: np.ndarray, exp_rows: np.ndarray, id_rows: np.ndarray | None, ang: np.ndarray,
                     t_cm: np.ndarray, target: np.ndarray, w_sqrt: np.ndarray, cam: FrameCamera, jacobian: bool):
        """Residuals (136,) and Jacobians w.r.t. [angles, t, expression] (136, 6+E) and identity
        (136, I) (None when ``id_rows`` is None or ``jacobian`` is False).

        ``X_rows`` (68, 3): the landmark points; ``exp_rows`` (E, 68, 3), ``id_rows`` (I, 68, 3):
        the bases at those rows.
        """
        R = self._rotation(ang)
        Xc = X_rows @ R.T + t_cm * _T_UNIT
        f = cam.focal_px
        x, y, z = Xc[:, 0], Xc[:, 1], Xc[:, 2]
        cx, cy = cam.centre
        uv = np.stack([f * x / z + cx, f * y / z + cy], -1)
        r = ((uv - target) * w_sqrt).reshape(-1)
        if not jacobian:
            return r, None, None
        n = len(X_rows)
        duv = np.zeros((n, 2, 3))
        duv[:, 0, 0] = f / z
        duv[:, 0, 2] = -f * x / z**2
        duv[:, 1, 1] = f / z
        duv[:, 1, 2] = -f * y / z**2
        duv *= w_sqrt.reshape(n, 1, 1)
        dR = MODEL_TO_OPENCV.diagonal().reshape(3, 1, 1) * euler_jacobian_np(*ang)  # d R[i, j] / d angle k
        d_ang = np.einsum("ijk,nj->nik", dR, X_rows)  # (n, 3, 3)
        A = np.einsum("nac,nck->nak", duv, d_ang)  # (n, 2, 3)
        B = duv * _T_UNIT  # (n, 2, 3): d uv / d t_cm
        duvR = np.einsum("nac,cj->naj", duv, R)  # (n, 2, 3)
        C = np.einsum("naj,knj->nak", duvR, exp_rows)  # (n, 2, E)
        J = np.concatenate([A, B, C], -1).reshape(2 * n, -1)
        J_id = None
        if id_rows is not None:
            J_id = np.einsum("naj,knj->nak", duvR, id_rows).reshape(2 * n, -1)
        return r, J, J_id

    def _weights(self, uv_err: np.ndarray, unit: float) -> np.ndarray:
        """(68, 1) square roots of the robust landmark weights for the current errors (68, 2) px."""
        c = self.config
        d = np.linalg.norm(uv_err, axis=1) / unit
        w = self.base_w / (1.0 + (d / c.robust) ** 2) if c.robust > 0 else self.base_w
        return np.sqrt(w * c.w_landmark).reshape(68, 1) / unit

    def _project_theta(self, theta: np.ndarray, yaw, expression) -> np.ndarray:
        """Yaw within +-80 degrees and blendshape weights in [0, 1]; ``yaw``, ``expression``
        index ``theta`` (one frame's or all keyframes')."""
        theta = theta.copy()
        theta[yaw] = np.clip(theta[yaw], -1.4, 1.4)
        if self.blendshapes:
            theta[expression] = np.clip(theta[expression], 0.0, 1.0)
        return theta

    # ------------------------------------------------------------------ initialisation

    def initial_pose(self, landmarks68: np.ndarray, cam: FrameCamera, identity: np.ndarray | None = None) -> FramePose:
        """Pose of the (mean or given) neutral face by PnP on the inner 51 landmarks."""
        pts = self.identity_points(np.zeros(self.n_id) if identity is None else identity)
        obj = pts[self.lm_rows]
        img = np.asarray(landmarks68, np.float64)
        z0 = cam.focal_px * 150.0 / max(np.ptp(img[:, 0]), 1.0)  # a face ~150 mm wide
        R_cv, t, _ = pose_from_landmarks(obj, img, cam.intrinsics(), distance_mm=z0)
        ang = matrix_to_euler(torch.from_numpy(MODEL_TO_OPENCV @ R_cv)[None])[0].numpy()
        return FramePose(ang.astype(np.float64), t, np.zeros(self.n_exp))

    # ------------------------------------------------------------------ one frame

    def fit_frame(self, landmarks68: np.ndarray, cam: FrameCamera, identity: np.ndarray,
                  init: FramePose | None = None, prior: FramePose | None = None,
                  iterations: int | None = None) -> FramePose:
        """Pose and expression of one frame with the identity fixed.

        Args:
            landmarks68: (68, 2) frame pixels.
            identity: (I,) the clip's identity.
            init: starting point (default: PnP of the neutral face).
            prior: the temporal prior's centre (normally the previous frame's result); None: no
                temporal term.
            iterations: at most this many (default ``config.frame_iterations``).
        """
        c = self.config
        target = np.asarray(landmarks68, np.float64)
        unit = face_size_px(target) / 100.0
        id_pts = self.identity_points(identity)
        p0 = init if init is not None else self.initial_pose(target, cam, identity)
        E = self.n_exp
        theta = np.concatenate([p0.angles_rad, p0.translation_mm / _T_UNIT, p0.expression]).astype(np.float64)
        prior_w = np.concatenate([np.zeros(6), np.full(E, c.w_expression)])
        mu = np.zeros_like(theta)
        if prior is not None:
            tw = np.concatenate([np.full(3, c.w_temporal_rotation), np.full(3, c.w_temporal_translation),
                                 np.full(E, c.w_temporal_expression)])
            mu_t = np.concatenate([prior.angles_rad, prior.translation_mm / _T_UNIT, prior.expression])
            # Two quadratics in one: a (x - m1)^2 + b (x - m2)^2 = (a + b) (x - m)^2 + const.
            mu = (prior_w * mu + tw * mu_t) / np.maximum(prior_w + tw, 1e-12)
            prior_w = prior_w + tw

        def system(th: np.ndarray):
            ang, t_cm, expr = th[:3], th[3:6], th[6:]
            rows = self.landmark_rows(self._points(id_pts, expr), ang, t_cm * _T_UNIT, cam)
            exp_rows, base = self.exp_basis[:, rows], id_pts[rows]
            ones = np.ones((68, 1))
            r0, _, _ = self._frame_terms(base + np.einsum("k,knc->nc", expr, exp_rows), exp_rows, None, ang, t_cm,
                                         target, ones, cam, False)
            w_sqrt = self._weights(r0.reshape(68, 2), unit)

            def evaluate(th2: np.ndarray, jacobian: bool):
                X = base + np.einsum("k,knc->nc", th2[6:], exp_rows)
                r, J, _ = self._frame_terms(X, exp_rows, None, th2[:3], th2[3:6], target, w_sqrt, cam, jacobian)
                return r, J

            return evaluate

        theta = self._solve(theta, system, prior_w, mu, iterations or c.frame_iterations,
                            lambda th: self._project_theta(th, 1, slice(6, None)))
        return FramePose(theta[:3].copy(), theta[3:6] * _T_UNIT, theta[6:].copy())

    @staticmethod
    def _solve(theta: np.ndarray, system, prior_w: np.ndarray, mu: np.ndarray, iterations: int, project) -> np.ndarray:
        """Levenberg-Marquardt on ``|r(theta)|^2 + sum prior_w (theta - mu)^2``; ``system(theta)``
        returns ``evaluate(theta, jacobian) -> (r, J)`` with the contour and robust weights of
        that iterate held fixed."""
        lam = 1e-2

        def total(r, th):
            d = th - mu
            return float(r @ r + (prior_w * d * d).sum())

        for _ in range(iterations):
            evaluate = system(theta)
            r, J = evaluate(theta, True)
            cost = total(r, theta)
            JtJ = J.T @ J
            JtJ[np.diag_indices_from(JtJ)] += prior_w
            g = J.T @ r + prior_w * (theta - mu)
            diag = JtJ.diagonal().copy()
            improved = converged = False
            for _ in range(6):
                A = JtJ.copy()
                A[np.diag_indices_from(A)] += lam * (diag + 1e-9)
                step = np.linalg.solve(A, g)
                cand = project(theta - step)
                cost_c = total(evaluate(cand, False)[0], cand)
                if cost_c < cost:
                    converged = cost - cost_c < 1e-4 * cost
                    theta, lam, improved = cand, max(lam / 3.0, 1e-7), True
                    break
                lam *= 4.0
            if not improved or converged:
                break
        return theta

    # ------------------------------------------------------------------ joint identity

    def fit_identity(self, landmarks: list[np.ndarray], cam: FrameCamera, inits: list[FramePose],
                     identity0: np.ndarray | None = None) -> tuple[np.ndarray, list[FramePose]]:
        """One identity for K frames, solved jointly with each frame's pose and expression.

        Args:
            landmarks: K arrays (68, 2) in frame pixels (sharp frames of varied pose).
            inits: K starting poses (e.g. :meth:`initial_pose`).
            identity0: (I,) starting identity (default: the mean face).

        Returns:
            ``(identity (I,), K refined poses)``.
        """
        c = self.config
        K, I, E = len(landmarks), self.n_id, self.n_exp
        if K < 1 or len(inits) != K:
            raise ValueError(f"need K >= 1 frames with as many initial poses; got {K} and {len(inits)}")
        P = 6 + E
        targets = [np.asarray(lm, np.float64) for lm in landmarks]
        units = [face_size_px(lm) / 100.0 for lm in targets]
        ident0 = np.zeros(I) if identity0 is None else np.asarray(identity0, np.float64)
        theta = np.concatenate([ident0] + [np.concatenate([p.angles_rad, p.translation_mm / _T_UNIT, p.expression])
                                           for p in inits]).astype(np.float64)
        prior_w = np.concatenate([np.full(I, c.w_identity)] + [np.concatenate([np.zeros(6), np.full(E, c.w_expression)])]
                                 * K)
        mu = np.zeros_like(theta)

        def frame(th: np.ndarray, k: int) -> np.ndarray:
            return th[I + k * P:I + (k + 1) * P]

        def system(th: np.ndarray):
            id_pts = self.identity_points(th[:I])
            rows, w_sqrt = [], []
            for k in range(K):
                f = frame(th, k)
                rk = self.landmark_rows(self._points(id_pts, f[6:]), f[:3], f[3:6] * _T_UNIT, cam)
                X = self._points(id_pts, f[6:])[rk]
                r0, _, _ = self._frame_terms(X, self.exp_basis[:, rk], None, f[:3], f[3:6], targets[k],
                                             np.ones((68, 1)), cam, False)
                rows.append(rk)
                w_sqrt.append(self._weights(r0.reshape(68, 2), units[k]))
            exp_rows = [self.exp_basis[:, rk] for rk in rows]
            id_rows = [self.id_basis[:, rk] for rk in rows]

            def evaluate(th2: np.ndarray, jacobian: bool):
                id_pts2 = self.identity_points(th2[:I])
                rs = []
                J = np.zeros((K * 136, I + K * P)) if jacobian else None
                for k in range(K):
                    f = frame(th2, k)
                    X = id_pts2[rows[k]] + np.einsum("e,enc->nc", f[6:], exp_rows[k])
                    r, Jf, Jid = self._frame_terms(X, exp_rows[k], id_rows[k] if jacobian else None, f[:3], f[3:6],
                                                   targets[k], w_sqrt[k], cam, jacobian)
                    rs.append(r)
                    if jacobian:
                        J[k * 136:(k + 1) * 136, :I] = Jid
                        J[k * 136:(k + 1) * 136, I + k * P:I + (k + 1) * P] = Jf
                return np.concatenate(rs), J

            return evaluate

        yaw_idx = np.array([I + k * P + 1 for k in range(K)])
        exp_mask = np.zeros(len(theta), bool)
        for k in range(K):
            exp_mask[I + k * P + 6:I + (k + 1) * P] = True

        theta = self._solve(theta, system, prior_w, mu, c.joint_iterations,
                            lambda th: self._project_theta(th, yaw_idx, exp_mask))
        poses = [FramePose(frame(theta, k)[:3].copy(), frame(theta, k)[3:6] * _T_UNIT, frame(theta, k)[6:].copy())
                 for k in range(K)]
        return theta[:I].copy(), poses

    # ------------------------------------------------------------------ outputs

    def vertices(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """(V, 3) float64 canonical vertices (model frame, mm) of the whole mesh."""
        m = self.model
        with torch.no_grad():
            v = m.vertices(torch.as_tensor(identity, dtype=torch.float32)[None],
                           torch.as_tensor(expression, dtype=torch.float32)[None])[0]
        return v.numpy().astype(np.float64)

    def landmark_points(self, identity: np.ndarray, expression: np.ndarray) -> np.ndarray:
        """(68, 3) the model's fixed 68 landmark vertices (model frame, mm)."""
        return self._points(self.identity_points(identity), np.asarray(expression, np.float64))[self.lm_rows]

    def project(self, points_mm: np.ndarray, pose: FramePose, cam: FrameCamera) -> np.ndarray:
        """(N, 2) frame pixels of model-frame points posed by ``pose``."""
        Xc = np.asarray(points_mm, np.float64) @ pose.rotation_cv().T + pose.translation_mm
        cx, cy = cam.centre
        return np.stack([cam.focal_px * Xc[:, 0] / Xc[:, 2] + cx, cam.focal_px * Xc[:, 1] / Xc[:, 2] + cy], 1)
