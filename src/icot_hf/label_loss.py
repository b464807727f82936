"""Logits only where labels are: the output layer and the cross-entropy on labelled positions.

The teacher's loss reads the positions after the first separator and the student's only the
answer, yet a causal LM's forward computes the output layer at every position and returns a
(B, T, V) float tensor that the loss then copies, upcasts and reads again. With GPT-2's
50,257-token vocabulary that layer is most of a small model's step.

`label_position_loss` runs the wrapped model as usual but asks it for one position's logits
(`logits_to_keep=1`), takes the final hidden states from a forward hook on the decoder body,
keeps the rows whose next token has a label, and computes the loss there with
`LinearCrossEntropy`: chunk by chunk, the logits of a chunk are made, turned into the loss and
into their gradients with respect to the hidden rows and the output weight, and dropped. So the
full logit tensor never exists, and backward is two scaled copies. The model is still called
through its wrappers (DDP, PEFT), so distributed gradient sync works as before.

torch 2.13's `F.linear_cross_entropy` computes the same loss and gradients (tested), but not the
argmax the token accuracy needs, and on this CPU it is slower: 6.1 s on its reference path and
18-51 s on its chunked one, against 4.5 s here (3,072 rows, H = 128, V = 50,257, forward and
backward, one thread). So the loss stays here, checked against torch's.

Mixed precision: accelerate applies autocast inside `model.forward`, and this loss runs after the
forward returns, so it makes the logits with the fp32 master weight, in fp32, the largest matmul of
a small model's step. `compute_dtype` (bf16/fp16) makes the logits and the weight's gradient with
that dtype's matmul instead (fp32 accumulation), keeping the log-sum-exp, the loss and the
gradient's sum over chunks in fp32 (tested against the fp32 path). The trainers pass it under
bf16/fp16 as `output_layer_precision` decides (icot_hf.precision.output_layer_dtype: by default from
4,096 vocabulary tokens up; the digit tokenizers' tiny layer stays fp32); benchmarks/train_throughput.py
(`--precisions fp32 bf16 bf16-fp32head`) measures the gain per vocabulary (results/output_layer_precision.md).

It applies where the logits are exactly `lm_head(last_hidden_state)` (`PLAIN_HEAD_MODEL_TYPES`,
no soft-capping or logit scale) and the head's weight is a whole tensor (not under DeepSpeed
ZeRO-3, which partitions it outside the module's forward); elsewhere `label_position_loss`
returns None and the trainers use the model's own loss.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from torch import nn

PLAIN_HEAD_MODEL_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gpt_neox", "olmo2", "smollm3"}
# Rows per chunk: about 8M logits (32 MB in fp32). Smaller chunks keep the logits in cache between
# the matmul that makes them and the passes over them, larger ones give the matmuls more rows. Measured
# 2026-12-07 (AMD EPYC, 2 threads, a 4 x 128 Llama teacher step, 1,792 labelled rows; seconds per step,
# fp32 / bf16): at 50,257 tokens 83 rows 1.05 / 0.73, 166 rows (8M) 1.02 / 0.68, 332 rows 1.15 / 0.81;
# at 128,256 tokens 32 rows 2.87 / 1.96, 64 rows (8M) 2.41 / 1.69, 128 rows 2.12 / 1.79, 256 rows
# 2.23 / 2.34. A small vocabulary fits whole in one chunk.
CHUNK_ELEMENTS = 8 * 2**20
# Rows per weight-gradient matmul: about 32M logits (128 MB of softmax gradients in fp32, 64 MB in bf16).
GROUP_ELEMENTS = 32 * 2**20


class LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(hidden_i @ weight.T + bias, target_i), computed in row chunks with the gradients
    made in the forward pass (softmax - one-hot, per chunk), so no (N, V) tensor is kept."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_rows, compute_dtype=None):
        count = hidden.shape[0]
        # Under mixed precision the two large matmuls (logits; the weight's gradient) run in the
        # compute dtype, accumulating in fp32 inside each matmul; the log-sum-exp, the loss, the
        # softmax gradient and the sum over chunks of the weight's gradient stay in fp32.
        low = compute_dtype if compute_dtype is not None and compute_dtype != torch.float32 else None
        matmul_weight = weight.to(low) if low is not None else weight
        matmul_hidden = hidden.to(low) if low is not None else hidden
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1] or (bias is not None and ctx.needs_input_grad[2])
        grad_hidden = torch.empty_like(hidden) if needs_grad else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if needs_grad else None
        grad_bias = torch.zeros_like(bias, dtype=torch.float32) if needs_grad and bias is not None else None
        loss = hidden.new_zeros((), dtype=torch.float32)
        predictions = torch.empty_like(targets)
        # The weight's gradient is one matmul per group of rows, not per chunk: each product adds a whole
        # (V, H) matrix to the total, so at a large vocabulary and a small chunk (32 rows at 128k tokens)
        # those additions, not the arithmetic, were most of the layer's time (profiled: 0.5 s of a 3.6 s
        # bf16 step). A group's softmax gradients wait in `buffer`, made there in place.
        vocab = weight.shape[0]
        group_rows = max(chunk_rows, GROUP_ELEMENTS // vocab // chunk_rows * chunk_rows) if needs_grad else chunk_rows
        buffer = torch.empty((min(group_rows, count), vocab), dtype=matmul_weight.dtype) if needs_grad else None
        for group in range(0, count, group_rows):
            group_end = min(group + group_rows, count)
            for start in range(group, group_end, chunk_rows):
                rows = slice(start, min(start + chunk_rows, group_end))
                kept = buffer[rows.start - group : rows.stop - group] if needs_grad else None
                if kept is not None and low is None:  # the logits made where their gradient will wait
                    logits = torch.matmul(matmul_hidden[rows], matmul_weight.t(), out=kept)
                else:
                    logits = matmul_hidden[rows] @ matmul_weight.t()
                if bias is not None:
                    logits.add_(bias)
                logits = logits.float()
                target = targets[rows]
                # Five passes over the chunk's logits, all in place: the row maxima with their argmax
                # (the token accuracy's predictions; the first of tied maxima, as argmax), exp(logit - max),
                # the row sums, and (for the gradient) the division that makes the softmax.
                target_logit = logits.gather(1, target.unsqueeze(1)).squeeze(1)
                top, predictions[rows] = logits.max(-1)
                exps = logits.sub_(top.unsqueeze(1)).exp_()
                sums = exps.sum(-1)
                loss += (top + sums.log() - target_logit).sum()
                if needs_grad:  # d(sum of CE)/d(logits) = softmax - one-hot, made in place over the logits
                    grad_logits = exps.div_(sums.unsqueeze(1))
                    grad_logits[torch.arange(grad_logits.shape[0], device=grad_logits.device), target] -= 1.0
                    if grad_logits.data_ptr() != kept.data_ptr():  # made in fp32 from lower-precision logits
                        kept.copy_(grad_logits)  # the matmul dtype's copy, for both matmuls
                    grad_hidden[rows] = (kept @ matmul_weight).div_(count).to(hidden.dtype)
                    if grad_bias is not None:
                        grad_bias += grad_logits.sum(0)
            if needs_grad:  # this group's (V, H) sum, in the compute dtype's matmul, added to the fp32 total
                group_grads = buffer[: group_end - group].t()
                if low is None:
                    grad_weight.addmm_(group_grads.float(), hidden[group:group_end].float())
                else:
                    grad_weight += group_grads @ matmul_hidden[group:group_end]
        if needs_grad:  # the mean's 1/N, applied once to the (V, H) sums
            grad_weight.div_(count)
            if grad_bias is not None:
                grad_bias.div_(count)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.mark_non_differentiable(predictions)
        return loss / count, predictions

    @staticmethod
    def backward(ctx, grad_loss, _grad_predictions):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hidden_grad = grad_hidden * grad_loss.to(grad_hidden.dtype) if grad_hidden is not None else None
        weight_grad = (grad_weight * grad_loss).to(ctx.weight_dtype) if grad_weight is not None else None
        bias_grad = (grad_bias * grad_loss).to(ctx.bias_dtype) if grad_bias is not None else None
        return hidden_grad, weight_grad, bias_grad, None, None, None


def causal_lm_inside(model: nn.Module) -> nn.Module:
    """The plain causal LM inside DDP/DeepSpeed, PEFT and icot_hf's student/emulator wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP, DeepSpeed engine
            model = model.module
        elif hasattr(model, "student") and isinstance(model.student, nn.Module):  # ImplicitCoTForCausalLM: the student answers
            model = model.student
        elif hasattr(model, "lm") and isinstance(model.lm, nn.Module):  # ImplicitCoTStudent / Emulator
            model = model.lm
        elif hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
    return model


def label_logits_supported(lm: nn.Module) -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    config = getattr(lm, "config", None)
    head = lm.get_output_embeddings() if hasattr(lm, "get_output_embeddings") else None
    return (
        config is not None and config.model_type in PLAIN_HEAD_MODEL_TYPES
        and getattr(config, "final_logit_softcapping", None) is None and getattr(config, "logit_scale", None) is None
        and isinstance(head, nn.Linear) and hasattr(lm, lm.base_model_prefix)
        and "logits_to_keep" in inspect.signature(lm.forward).parameters
        and not is_deepspeed_zero3_enabled()
    )


@contextmanager
def captured_last_hidden(lm: nn.Module):
    """Records the decoder body's last hidden state (B, T, H) of the next forward."""
    captured = {}

    def hook(_module, _args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = getattr(lm, lm.base_model_prefix).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def label_position_loss(model: nn.Module, labels: torch.Tensor, chunk_rows: int | None = None, compute_dtype: torch.dtype | None = None,
                        **forward_kwargs):
    """(loss, token accuracy) of `model(**forward_kwargs)` on the positions `labels` marks
    (unshifted, -100 ignored, like HF's causal-LM loss), with the output layer computed on
    those positions only; None where the model's head is not a plain linear layer (see the
    module docstring): the caller then uses the model's own loss. `compute_dtype` (bf16/fp16;
    None: the tensors' own dtypes, as before) is what the output layer's matmuls run in: the
    model's forward runs under autocast, but this loss runs after it returns."""
    lm = causal_lm_inside(model)
    if not label_logits_supported(lm):
        return None
    with captured_last_hidden(lm) as captured:
        model(labels=None, logits_to_keep=1, **forward_kwargs)
    hidden = captured["hidden"][:, :-1]
    targets = labels[:, 1:]
    keep = targets != -100
    head = lm.get_output_embeddings()
    if not bool(keep.any()):
        return hidden.sum() * 0.0, hidden.new_zeros(())
    chunk_rows = chunk_rows or max(16, CHUNK_ELEMENTS // head.weight.shape[0])
    loss, predictions = LinearCrossEntropy.apply(hidden[keep], head.weight, head.bias, targets[keep], chunk_rows, compute_dtype)
    return loss, (predictions == targets[keep]).float().mean()
