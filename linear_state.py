"""
linear_state.py: "once per prompt" for linear-attention layers (Qwen3.5's Gated DeltaNet), the part
of the engine a reader of the attention-only families can skip.

A Gated DeltaNet layer keeps no keys/values. Its whole past, per row, is two tensors:
- the convolution state [B, C, K]: the last K inputs of its causal depthwise convolution (K = 4;
  C = 2 * key_dim + value_dim, the q, k, v channels before the convolution);
- the recurrent state [B, H, dk, dv]: the delta-rule memory S, updated per token
  S <- exp(g) S + beta k (v - exp(g) S^T k)^T, read as o = S^T q.
So a completion continues its prompt exactly when it starts from the prompt's final conv and
recurrent states, as an attention layer continues from the prompt's keys/values. The prompt's
states are computed once and indexed into its rows: in sampling (a copy per row, then decoded in
place) and in scoring (SharedLinearStates: inside the autograd graph, so each row's gradient flows
back into the one prompt computation, summed, as if the row had its own copy).

Left padding: Hugging Face zeroes a linear layer's input at padded positions (the attention mask,
apply_mask_to_padding_states). The projections and the convolution have no bias, so a pad token
brings q = k = v = 0: the recurrent state stays exactly 0 through the pads (0 * decay + beta * 0)
and the convolution window sees zeros, as the unpadded row's zero padding would. A left-padded
prompt therefore has the states of the unpadded one (test_qwen3_5.py checks it). Single-token
decode steps carry no mask (a generated token is never padding).

The kernels (flash-linear-attention's chunked and fused-recurrent delta rule, causal-conv1d) are
picked by transformers when installed; the states they take and return are the same tensors, so
nothing here depends on which ran. On CPU the pure PyTorch fallback runs.
"""
import torch
import torch.nn.functional as F
from transformers.cache_utils import LinearAttentionCacheLayerMixin


def is_linear(cache_layer):
    """Whether a cache layer holds linear-attention states (Qwen3.5's Gated DeltaNet layers)."""
    return isinstance(cache_layer, LinearAttentionCacheLayerMixin)


class SharedLinearStates:
    """The linear layers' side of model.SharedPromptCache (a mixin: it needs prompt_index, layers,
    reads). Hugging Face's Gated DeltaNet calls, per layer and forward: get_conv_state,
    get_recurrent_state, update_conv_state (returns the conv input incl. the past), the delta rule
    (from the recurrent state returned), update_recurrent_state.

    prompts (prompt_index None): no past; record each layer's final conv state (its last K inputs,
    [P, C, K]) and recurrent state ([P, H, dk, dv]); the first call only, so a checkpoint replay
    records nothing. rows: conv input = the prompt's conv state [prompt_index] ++ the rows' own;
    initial recurrent state = the prompt's [prompt_index]; a layer counts as read (reads += 1) once
    it has taken both.
    """

    def get_conv_state(self, layer_idx, state_idx=0):
        return None  # the layer then always hands update_conv_state its input (no in-place step)

    def get_recurrent_state(self, layer_idx, state_idx=0):
        if self.prompt_index is None:
            return None
        self.linear_reads.add(("recurrent", layer_idx))
        return self.layers[layer_idx].recurrent_states[0][self.prompt_index]  # [R, H, dk, dv]

    def update_conv_state(self, conv_input, layer_idx, state_idx=0, conv_kernel_size=None, **kw):
        layer = self.layers[layer_idx]  # conv_input [B, C, L]: q, k, v channels before the conv
        if self.prompt_index is None:
            if not layer.is_conv_states_initialized[0]:
                K = conv_kernel_size
                layer.conv_states[0] = last_columns(conv_input, K)  # [P, C, K]
                layer.conv_kernel_size[0], layer.is_conv_states_initialized[0] = K, True
            return conv_input
        self.linear_reads.add(("conv", layer_idx))
        # the layer convolves this and keeps the last T outputs: the rows', seeing the prompt's end
        past = layer.conv_states[0][self.prompt_index]  # [R, C, K]
        return torch.cat([past, conv_input], dim=-1)  # [R, C, K+T]

    def update_recurrent_state(self, state, layer_idx, state_idx=0, **kwargs):
        layer = self.layers[layer_idx]
        if self.prompt_index is None:
            if not layer.is_recurrent_states_initialized[0]:
                layer.recurrent_states[0] = state  # [P, H, dk, dv]
                layer.is_recurrent_states_initialized[0] = True
        elif {("conv", layer_idx), ("recurrent", layer_idx)} <= self.linear_reads:
            self.reads += 1
        return state


def last_columns(x, K):
    """x [..., L] -> [..., K]: the last K columns, zeros in front when L < K (a prompt shorter than
    the kernel: the convolution's own zero padding)."""
    return F.pad(x, (max(0, K - x.shape[-1]), 0))[..., -K:]


def copy_rows(cache_layer, prefilled, index):
    """Sampling: give a rollout cache's linear layer the rows `index` of the prefilled prompts'
    states (each prompt's states copied into its n rows); decoding then updates them in place."""
    conv = prefilled.conv_states[0][index]  # [R, C, K]
    recurrent = prefilled.recurrent_states[0][index]  # [R, H, dk, dv]
    cache_layer.lazy_initialization(conv_states=conv, recurrent_states=recurrent)
    cache_layer.conv_states[0].copy_(conv)
    cache_layer.recurrent_states[0].copy_(recurrent)
    cache_layer.has_previous_state[0] = True


def keep_rows(cache_layer, keep):
    """Sampling: drop the finished rows from a linear layer's states (they leave the batch)."""
    cache_layer.reorder_cache(keep)
