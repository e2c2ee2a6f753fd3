"""Adam for the fitting loops, without ``torch.optim``.

Constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` on its first use in a
process (its methods are wrapped by ``torch._compile._disable_dynamo``): about 2 s on the 2-core
development machine, paid by the first photo of every command, batch worker and web-demo
server. The fitter needs none of it, so :class:`Adam` performs exactly the operations of
``torch.optim.Adam``'s single-tensor update (the one PyTorch uses for CPU tensors; no weight
decay, no AMSGrad), in the same order and precision: the fits are bit-identical to those with
``torch.optim.Adam`` on the CPU. (For CUDA tensors PyTorch defaults to its multi-tensor update,
which rounds differently in the last bits.)
"""

from __future__ import annotations

import torch
from torch import Tensor


class Adam:
    """Adam (Kingma and Ba) over parameter groups ``[{"params": [tensor, ...], "lr": float}]``.

    Args:
        param_groups: the tensors to optimise (leaf tensors with ``requires_grad``) and each
            group's learning rate.
        betas: decay of the first and second moment estimates.
        eps: added to the denominator.
    """

    def __init__(self, param_groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.groups = [{"params": list(g["params"]), "lr": float(g["lr"])} for g in param_groups]
        self.beta1, self.beta2 = betas
        self.eps = eps
        #: Per tensor: (first moment, second moment, steps taken), created on its first step.
        self.state: dict[int, list] = {}

    def zero_grad(self) -> None:
        """Forget the gradients (``set_to_none``)."""
        for g in self.groups:
            for p in g["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every tensor that has a gradient."""
        beta1, beta2 = self.beta1, self.beta2
        for g in self.groups:
            lr = g["lr"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(id(p))
                if state is None:
                    state = self.state[id(p)] = [torch.zeros_like(p, memory_format=torch.preserve_format),
                                                 torch.zeros_like(p, memory_format=torch.preserve_format), 0]
                exp_avg, exp_avg_sq = state[0], state[1]
                state[2] += 1
                step = float(state[2])
                grad: Tensor = p.grad
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                bias_correction1 = 1 - beta1**step
                bias_correction2 = 1 - beta2**step
                step_size = lr / bias_correction1
                denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
                p.addcdiv_(exp_avg, denom, value=-step_size)
