"""An independent plain-PyTorch MAML (autograd.grad in a loop over tasks) to compare with."""

import torch
from torch.func import functional_call


def plain_meta_loss(model, batch, loss_fn, inner_lr, steps, first_order=False):
    params = dict(model.named_parameters())
    losses = []
    for i in range(batch.num_tasks):
        (sx, sy), (qx, qy) = (t[i] for t in batch.support), (t[i] for t in batch.query)
        fast = dict(params)
        for step in range(steps):
            lr = inner_lr[step] if isinstance(inner_lr, list | tuple) else inner_lr
            loss = loss_fn(functional_call(model, fast, (sx,)), sy)
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
            fast = {n: p - lr * g for (n, p), g in zip(fast.items(), grads, strict=True)}
        losses.append(loss_fn(functional_call(model, fast, (qx,)), qy))
    return torch.stack(losses).mean()


def meta_grad(loss, model):
    return torch.autograd.grad(loss, list(model.parameters()))
