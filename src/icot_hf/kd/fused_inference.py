"""The thought emulator's per-layer step for inference (no autograd) in fewer, larger
operations: the same arithmetic as `ImplicitCoTEmulator.forward`'s training path.

Why: at small batch the emulator's step runs between decoder layers on one vector per row,
so much of its cost is per operation (a kernel launch on a GPU, dispatch on a CPU). Profiled
on the untrained 8 x 128 4x4 shape (one thread), the step took more time than the emulator's
whole decoder pass over the question: two `einsum`s (their parsing alone costs several small
matmuls), an LSTM cell made of two matmuls and a chain of gate ops, separate key and query
projections, and a concatenation before each state MLP; fused, the emulator pass went from
12.2 to 10.7 ms. On wider models at batch 1 on a CPU, reading the modules' weights is most of
the step's time and fusing does not change that (experiments/notes/bench_runs.md, session 6).
Here the weights are fused once (and kept until a parameter changes):

- the key and query projections are one matmul;
- the LSTM cell's two matmuls are one, over [input; h] against [W_ih; W_hh];
- with a one-vector mixture table (the default), the state MLP's first layer reads z alone,
  the table's constant contribution folded into its bias (no concatenation);
- attention over the earlier layers' keys is two `bmm`s on a preallocated key buffer, and
  predictions go straight into the (B, L, H) output.

Only the shared LSTM and key/query weights are copied (10 H^2 values); the per-layer state MLPs,
most of the emulator's size, are read through transposed views.

`tests/test_fused_inference.py` checks it against the training path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..hooks import substitute_rows


@dataclass
class FusedEmulatorWeights:
    """Weights of the inference step, derived from the emulator's parameters."""

    mlp_in_weight: list[torch.Tensor]  # per layer (in, 4H), a transposed view; in = H with a folded table, else 2H
    mlp_in_bias: list[torch.Tensor]
    mlp_out_weight: list[torch.Tensor]  # per layer (4H, H)
    mlp_out_bias: list[torch.Tensor]
    lstm_weight: torch.Tensor  # (2H, 4H): [W_ih; W_hh] transposed
    lstm_bias: torch.Tensor
    key_query_weight: torch.Tensor  # (H, 2H)
    key_query_bias: torch.Tensor
    out_weight: torch.Tensor  # (2H, H)
    out_bias: torch.Tensor
    table_folded: bool


def fuse_weights(emulator) -> FusedEmulatorWeights:
    width = emulator.config.base_config.hidden_size
    table = emulator.mixture.weight
    folded = table.shape[0] == 1
    mlp_in_weight, mlp_in_bias, mlp_out_weight, mlp_out_bias = [], [], [], []
    # Per-layer weights are transposed views of the parameters (no copy: the state MLPs are most
    # of the emulator's size); only the shared LSTM and key/query weights are concatenated copies.
    for mlp in emulator.state_mlps:
        first, last = mlp[0], mlp[2]
        if folded:  # [z; m] W^T + b = z W_z^T + (m W_m^T + b)
            mlp_in_weight.append(first.weight[:, :width].t())
            mlp_in_bias.append(torch.addmv(first.bias, first.weight[:, width:], table[0]))
        else:
            mlp_in_weight.append(first.weight.t())
            mlp_in_bias.append(first.bias)
        mlp_out_weight.append(last.weight.t())
        mlp_out_bias.append(last.bias)
    lstm = emulator.lstm
    return FusedEmulatorWeights(
        mlp_in_weight, mlp_in_bias, mlp_out_weight, mlp_out_bias,
        lstm_weight=torch.cat([lstm.weight_ih, lstm.weight_hh], dim=1).t().contiguous(),
        lstm_bias=lstm.bias_ih + lstm.bias_hh,
        key_query_weight=torch.cat([emulator.key_proj.weight, emulator.query_proj.weight], dim=0).t().contiguous(),
        key_query_bias=torch.cat([emulator.key_proj.bias, emulator.query_proj.bias]),
        out_weight=emulator.out_proj.weight.t(),
        out_bias=emulator.out_proj.bias,
        table_folded=folded,
    )


def parameter_key(params) -> tuple:
    """What identifies the current values of `params`: an in-place change bumps `_version`; a
    device or dtype move (`module.to`, which swaps `.data` and keeps the version) changes the
    storage, its address, dtype or device."""
    return tuple((id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in params)


def fused_parameters(emulator) -> list[torch.Tensor]:
    """The parameters the fused weights are made from (read directly: walking
    `emulator.parameters()` would visit the whole decoder, milliseconds per call)."""
    params = [emulator.mixture.weight, emulator.lstm.weight_ih, emulator.lstm.weight_hh, emulator.lstm.bias_ih, emulator.lstm.bias_hh]
    for module in (emulator.key_proj, emulator.query_proj, emulator.out_proj, *(layer for mlp in emulator.state_mlps for layer in (mlp[0], mlp[2]))):
        params += (module.weight, module.bias)
    return params


def is_sharded(params) -> bool:
    """DeepSpeed ZeRO-3 partitions parameters and gathers each module's own when that module runs;
    the fused path reads the weights without running the modules, so it must not run there."""
    return any(hasattr(p, "ds_id") for p in params)


def can_fuse_emulator(emulator) -> bool:
    return not torch.is_grad_enabled() and not is_sharded(fused_parameters(emulator))


def fused_weights(emulator) -> FusedEmulatorWeights:
    """The fused weights, rebuilt when any parameter they are made from was replaced or
    changed in place (a training step, `load_state_dict`, a device or dtype move)."""
    key = parameter_key(fused_parameters(emulator))
    cached = getattr(emulator, "_fused_inference_cache", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, fuse_weights(emulator))
        emulator._fused_inference_cache = cached
    return cached[1]


class InferenceStep:
    """The emulator's edit at each decoder layer's input (see `hooks.edit_layer_inputs`),
    writing layer l's predicted state into `predicted[:, l]`."""

    def __init__(self, emulator, batch: int, temperature: float, device, dtype):
        self.emulator, self.temperature = emulator, temperature
        self.weights = fused_weights(emulator)
        width, layers = emulator.config.base_config.hidden_size, emulator.num_layers
        self.width = width
        self.predicted = torch.empty(batch, layers, width, device=device, dtype=dtype)
        self.keys = torch.empty(batch, layers, width, device=device, dtype=dtype)
        self.h = torch.zeros(batch, width, device=device, dtype=dtype)
        self.c = torch.zeros_like(self.h)
        self.context = torch.zeros_like(self.h)

    def __call__(self, layer: int, hidden: torch.Tensor, index) -> torch.Tensor:
        w, width = self.weights, self.width
        z = index.gather(hidden, copy=False).to(self.h.dtype)
        mlp_input = z if w.table_folded else torch.cat([z, self.emulator._mix(z, self.temperature)], dim=-1)
        hidden_mlp = torch.addmm(w.mlp_in_bias[layer], mlp_input, w.mlp_in_weight[layer]).relu_()
        prediction = torch.addmm(w.mlp_out_bias[layer], hidden_mlp, w.mlp_out_weight[layer])
        self.predicted[:, layer] = prediction
        # LSTM cell: gates i, f, g, o from [input; h] in one matmul
        gates = torch.addmm(w.lstm_bias, torch.cat([prediction + self.context, self.h], dim=-1), w.lstm_weight)
        sig = torch.sigmoid(gates)
        c = torch.addcmul(sig[:, width : 2 * width] * self.c, sig[:, :width], torch.tanh(gates[:, 2 * width : 3 * width]))
        h = sig[:, 3 * width :] * torch.tanh(c)
        self.h, self.c = h, c
        key_query = torch.addmm(w.key_query_bias, h, w.key_query_weight)
        if layer:
            past = self.keys[:, :layer]  # (B, l, H): the earlier layers' keys
            weights = torch.softmax(torch.bmm(past, key_query[:, width:].unsqueeze(-1)), dim=1)  # (B, l, 1)
            self.context = torch.bmm(weights.transpose(1, 2), past).squeeze(1)
        self.keys[:, layer] = key_query[:, :width]
        out = torch.addmm(w.out_bias, torch.cat([h, self.context], dim=-1), w.out_weight)
        return substitute_rows(hidden, index, out, layer)

