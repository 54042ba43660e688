"""Data sets an energy-based model learns from: 2-D toy sets generated in code, scikit-learn's bundled 8×8 digits,
and a user's own data.

Every data set is an :class:`EBMData`: ``train [N, d]`` and ``test [M, d]`` float32 tensors, ``dim``, ``name``, the
box ``bounds`` the data lives in (the quadrature grid of the evaluation and the uniform noise chains start from),
``image_shape`` for images (``None`` for vectors) and, where the true density is known, ``log_density(x) -> [B]``
(normalised; 8gaussians has one).

The config group ``data`` (``conf/data/``, with ``task=ebm``) names these classes: :class:`ToyData` for the toy sets,
:class:`DigitsData`, :class:`ArrayData` for a file (``data=array data.path=FILE``). A user's own data set is any
object with those attributes (``check_data`` says in one line what is missing), named by
``data._target_=my.module.MyData``, or an array file read by :class:`ArrayData`::

    class MyData(EBMData):
        def __init__(self, path: str, seed: int = 0):
            x = torch.load(path)                      # [N, d]
            super().__init__(x[:9000], x[9000:], name="mine")

The toy sets follow the conventions of the FFJORD code (Grathwohl et al. 2019, https://arxiv.org/abs/1810.01367)
and draw all their noise from one ``torch.Generator`` seeded with ``seed``: the training points first, then the
test points, so a seed fixes both splits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch

N_TRAIN = 5000  # default training points of a toy set
N_TEST = 2000  # default held-out points of a toy set
DIGITS_TEST_FRACTION = 0.2  # share of the 1797 digits held out


class EBMData:
    """A data set: train/test tensors and what the sampler, the plots and the evaluation need to know about it.

    Args:
        train: ``[N, d]`` training points.
        test: ``[M, d]`` held-out points (same ``d``).
        name: what plots and logs call it.
        bounds: ``(lo, hi)`` of the square box holding the data (default: the train range padded by 10 %).
        image_shape: ``(H, W)`` when each point is a flattened H×W image, else ``None``.
        log_density: the true normalised log-density ``x [B, d] -> [B]``, when known.

    Raises:
        ValueError: a tensor that is not 2-D and finite, train and test of different widths, or a bad box.
    """

    def __init__(
        self,
        train: torch.Tensor,
        test: torch.Tensor,
        name: str = "data",
        bounds: tuple[float, float] | None = None,
        image_shape: tuple[int, int] | None = None,
        log_density: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.train = _as_points(train, f"{name} train")
        self.test = _as_points(test, f"{name} test")
        if self.train.shape[1] != self.test.shape[1]:
            raise ValueError(
                f"{name}: train and test points must have the same dimension "
                f"(got {self.train.shape[1]} and {self.test.shape[1]})"
            )
        self.name = name
        self.dim = int(self.train.shape[1])
        if bounds is None:
            lo, hi = float(self.train.min()), float(self.train.max())
            pad = 0.1 * (hi - lo) or 1.0
            bounds = (lo - pad, hi + pad)
        self.bounds = (float(bounds[0]), float(bounds[1]))
        if not self.bounds[0] < self.bounds[1]:
            raise ValueError(f"{name}: bounds must be (lo, hi) with lo < hi (got {bounds})")
        self.image_shape = None if image_shape is None else (int(image_shape[0]), int(image_shape[1]))
        if self.image_shape is not None and math.prod(self.image_shape) != self.dim:
            raise ValueError(f"{name}: image_shape {self.image_shape} does not hold {self.dim} values per point")
        if log_density is not None:
            self.log_density = log_density

    log_density: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, train={tuple(self.train.shape)}, test={tuple(self.test.shape)})"


def _as_points(x, what: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty [N, d] array of points (got shape {tuple(x.shape)})")
    if not x.is_floating_point():
        x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError(f"{what} holds {int((~torch.isfinite(x)).sum())} non-finite values")
    return x.float().contiguous()


def check_data(data) -> None:
    """Raise one ValueError line when ``data`` lacks what the EBM code reads (``train``, ``test``, ``dim``, ...).

    Args:
        data: an :class:`EBMData` or any object with its attributes.
    """
    for attr in ("train", "test", "dim", "bounds"):
        if not hasattr(data, attr):
            raise ValueError(f"data set {type(data).__name__} has no `{attr}` (see sampler.ebm.data.EBMData)")
    for split in ("train", "test"):
        x = getattr(data, split)
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[1] != data.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"data.{split} must be a [N, {data.dim}] tensor (got {shape})")


# ------------------------------------------------------------------------------------------------------ toy sets
_S2 = math.sqrt(2.0)
GAUSS8_RADIUS = 4.0 / 1.414  # centres on a circle of this radius
GAUSS8_STD = 0.5 / 1.414  # per-axis std of each component


def gauss8_centres() -> torch.Tensor:
    """The 8 mode centres of 8gaussians ``[8, 2]`` (float64), on a circle of radius 4/1.414."""
    a = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    return GAUSS8_RADIUS * torch.stack([torch.cos(a), torch.sin(a)], 1)  # [8, 2]


def gauss8_log_density(x: torch.Tensor) -> torch.Tensor:
    """Exact log-density of 8gaussians (equal mixture of N(c_k, σ²I), σ = 0.5/1.414), ``x [B, 2] -> [B]``."""
    c = gauss8_centres().to(x.device)
    d2 = (x.double()[:, None, :] - c[None]).pow(2).sum(-1)  # [B, 8]
    log_comp = -d2 / (2 * GAUSS8_STD**2) - math.log(2 * math.pi * GAUSS8_STD**2)
    return (torch.logsumexp(log_comp, 1) - math.log(8)).to(x.dtype)


def _gauss8(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g)
    return (gauss8_centres().float()[k] + GAUSS8_STD * torch.randn(n, 2, generator=g)).float()


def _moons(n: int, g: torch.Generator) -> torch.Tensor:
    # scikit-learn's make_moons (noise 0.1), scaled by 2 and shifted by (−1, −0.2) as in FFJORD
    upper = torch.rand(n, generator=g) < 0.5
    t = math.pi * torch.rand(n, generator=g)
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    pts = torch.stack([x, y], 1) + 0.1 * torch.randn(n, 2, generator=g)
    return pts * 2 + torch.tensor([-1.0, -0.2])


def _rings(n: int, g: torch.Generator) -> torch.Tensor:
    # four concentric circles of radii 3, 2.25, 1.5 and 0.75 (equal shares) with noise std 0.08
    radii = torch.tensor([1.0, 0.75, 0.5, 0.25]) * 3.0
    k = torch.randint(0, 4, (n,), generator=g)
    t = 2 * math.pi * torch.rand(n, generator=g)
    pts = radii[k, None] * torch.stack([torch.cos(t), torch.sin(t)], 1)
    return pts + 0.08 * torch.randn(n, 2, generator=g)


def _checkerboard(n: int, g: torch.Generator) -> torch.Tensor:
    x1 = torch.rand(n, generator=g) * 4 - 2
    x2_ = torch.rand(n, generator=g) - torch.randint(0, 2, (n,), generator=g).float() * 2
    x2 = x2_ + torch.floor(x1) % 2
    return torch.stack([x1, x2], 1) * 2


def _pinwheel(n: int, g: torch.Generator) -> torch.Tensor:
    radial_std, tangential_std, n_classes, rate = 0.3, 0.1, 5, 0.25
    rads = torch.linspace(0, 2 * math.pi, n_classes + 1)[:-1]
    feats = torch.randn(n, 2, generator=g) * torch.tensor([radial_std, tangential_std])
    feats[:, 0] += 1.0
    labels = torch.randint(0, n_classes, (n,), generator=g)
    angles = rads[labels] + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # [n, 2, 2]
    return 2 * torch.einsum("ni,nij->nj", feats, rot)


def _spirals(n: int, g: torch.Generator) -> torch.Tensor:
    m = torch.sqrt(torch.rand(n, generator=g)) * 540 * (2 * math.pi) / 360
    d1x = -torch.cos(m) * m + torch.rand(n, generator=g) * 0.5
    d1y = torch.sin(m) * m + torch.rand(n, generator=g) * 0.5
    sign = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * torch.stack([d1x, d1y], 1) / 3
    return pts + 0.1 * torch.randn(n, 2, generator=g)


def _swissroll(n: int, g: torch.Generator) -> torch.Tensor:
    # scikit-learn's make_swiss_roll (noise 1.0), coordinates (x, z) divided by 5 as in FFJORD
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], 1) + torch.randn(n, 2, generator=g)
    return pts / 5


#: name -> (generator of n points, the square box that holds the data with a margin)
TOY_SETS: dict[str, tuple[Callable[[int, torch.Generator], torch.Tensor], tuple[float, float]]] = {
    "8gaussians": (_gauss8, (-4.5, 4.5)),
    "moons": (_moons, (-3.5, 3.5)),
    "rings": (_rings, (-4.0, 4.0)),
    "checkerboard": (_checkerboard, (-4.5, 4.5)),
    "pinwheel": (_pinwheel, (-4.5, 4.5)),
    "2spirals": (_spirals, (-4.5, 4.5)),
    "swissroll": (_swissroll, (-4.5, 4.5)),
}
DATA_SETS = (*TOY_SETS, "digits")


class ToyData(EBMData):
    """A 2-D toy set: ``n_train`` then ``n_test`` points drawn with ``torch.Generator().manual_seed(seed)`` (what
    ``data=moons`` and the other toy options build).

    Args:
        name: one of ``8gaussians moons rings checkerboard pinwheel 2spirals swissroll``.
        n_train, n_test: split sizes (both ≥ 1).
        seed: fixes both splits.

    Raises:
        ValueError: an unknown name or a split size below 1.
    """

    def __init__(self, name: str, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0):
        if name not in TOY_SETS:
            raise ValueError(f"data set must be one of {', '.join(DATA_SETS)} (got {name!r})")
        if int(n_train) < 1 or int(n_test) < 1:
            raise ValueError(f"n_train and n_test must be ≥ 1 (got {n_train} and {n_test})")
        fn, bounds = TOY_SETS[name]
        g = torch.Generator().manual_seed(int(seed))
        train = fn(int(n_train), g).float()
        test = fn(int(n_test), g).float()
        log_density = gauss8_log_density if name == "8gaussians" else None
        super().__init__(train, test, name=name, bounds=bounds, log_density=log_density)


def toy_data(name: str, n_train: int = N_TRAIN, n_test: int = N_TEST, seed: int = 0) -> ToyData:
    """A 2-D toy set (:class:`ToyData`); 8gaussians carries its exact ``log_density``.

    Raises:
        ValueError: an unknown name or a split size below 1.
    """
    return ToyData(name, n_train, n_test, seed)


class DigitsData(EBMData):
    """scikit-learn's bundled 8×8 digits (1797 images, no download), pixels 0..16 scaled to [-1, 1].

    Args:
        test_fraction: share held out, drawn by a seeded permutation.
        seed: fixes the split.

    Attributes:
        train_labels, test_labels: the digit classes ``[N]``, ``[M]`` (the classifier score trains on them).
    """

    def __init__(self, test_fraction: float = DIGITS_TEST_FRACTION, seed: int = 0):
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1) (got {test_fraction})")
        from sklearn.datasets import load_digits  # noqa: PLC0415 - scikit-learn only for this data set

        bunch = load_digits()
        x = torch.as_tensor(bunch.data, dtype=torch.float32) / 8.0 - 1.0  # [1797, 64] in [-1, 1]
        y = torch.as_tensor(bunch.target, dtype=torch.long)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
        n_test = round(len(x) * float(test_fraction))
        test_idx, train_idx = perm[:n_test], perm[n_test:]
        super().__init__(x[train_idx], x[test_idx], name="digits", bounds=(-1.0, 1.0), image_shape=(8, 8))
        self.train_labels, self.test_labels = y[train_idx], y[test_idx]


class ArrayData(EBMData):
    """A user's points from a ``.npy``, ``.pt`` or ``.csv`` file of shape ``[N, d]``, split by a seeded permutation
    (what ``data=array data.path=FILE`` builds). The box is the training range padded by 10 %.

    Args:
        path: the file.
        test_fraction: share held out, in (0, 1).
        seed: fixes the split.
        name: what logs call it (default: the file's stem).

    Raises:
        ValueError: a missing file, another suffix, or an array that is not ``[N, d]`` with N ≥ 2.
    """

    def __init__(self, path: str | Path, test_fraction: float = 0.2, seed: int = 0, name: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"data file {path} does not exist")
        suffix = path.suffix.lower()
        if suffix == ".npy":
            import numpy as np  # noqa: PLC0415

            x = torch.as_tensor(np.load(path, allow_pickle=False))
        elif suffix == ".pt":
            x = torch.load(path, weights_only=True)
        elif suffix == ".csv":
            import numpy as np  # noqa: PLC0415

            x = torch.as_tensor(np.loadtxt(path, delimiter=",", ndmin=2))
        else:
            raise ValueError(f"data file {path}: use .npy, .pt or .csv (got {suffix or 'no suffix'})")
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or x.shape[0] < 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"data file {path} must hold an [N, d] array with N ≥ 2 (got {shape})")
        if not 0.0 < float(test_fraction) < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1) (got {test_fraction})")
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(int(seed)))
        n_test = max(1, round(len(x) * float(test_fraction)))
        super().__init__(x[perm[n_test:]], x[perm[:n_test]], name=name or path.stem)


def load_array_data(path: str | Path, test_fraction: float = 0.2, seed: int = 0, name: str | None = None) -> ArrayData:
    """A user's points from a ``.npy``, ``.pt`` or ``.csv`` file of shape ``[N, d]`` (:class:`ArrayData`).

    Raises:
        ValueError: a missing file, another suffix, or an array that is not ``[N, d]`` with N ≥ 2.
    """
    return ArrayData(path, test_fraction, seed, name)


def make_data(name: str, seed: int = 0, **kwargs) -> EBMData:
    """The data set called ``name`` (a toy set or ``digits``), with its own keyword arguments.

    Raises:
        ValueError: an unknown name.
    """
    if name == "digits":
        return DigitsData(seed=seed, **kwargs)
    return toy_data(name, seed=seed, **kwargs)
