"""The Qwen3-Next multi-token-prediction (MTP) head, built from transformers' own layers in vLLM's
layout and key names (transformers has no MTP module and ignores `mtp.*` weights).

Wiring, as read in vLLM's vllm/model_executor/models/qwen3_next_mtp.py (Qwen3NextMultiTokenPredictor):
  e   = mtp.pre_fc_norm_embedding(embed_tokens(token[t+1]))      (shared embed_tokens)
  h   = mtp.pre_fc_norm_hidden(h_t)                              h_t: the main model's hidden state
        AFTER its final norm (vLLM's Qwen3NextModel.forward returns self.norm(...), and that is the
        hidden state the MTP proposer receives)
  x   = mtp.fc(concat(e, h))                                     embedding first; fc weight [D, 2D]
  x   = mtp.layers.0(x)   a full-attention decoder layer (MoE unless layer index 0 is in
        mlp_only_layers, vLLM's rule), causal over positions 0..T-2, RoPE position t
  out = lm_head(mtp.norm(x))                                     shared lm_head; predicts token t+2
The RMSNorms are Qwen3NextRMSNorm (zero-centred, `1 + w`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
import transformers.models.qwen3_next.modeling_qwen3_next as qn
from transformers.masking_utils import create_causal_mask


class Qwen3NextMTP(nn.Module):
    def __init__(self, config) -> None:  # config: the main model's Qwen3NextConfig
        super().__init__()
        d = config.hidden_size
        self.layer_config = copy.deepcopy(config)
        self.layer_config.layer_types = ["full_attention"]
        self.layer_config.num_hidden_layers = 1
        self.pre_fc_norm_embedding = qn.Qwen3NextRMSNorm(d, eps=config.rms_norm_eps)
        self.pre_fc_norm_hidden = qn.Qwen3NextRMSNorm(d, eps=config.rms_norm_eps)
        self.fc = nn.Linear(2 * d, d, bias=False)
        self.layers = nn.ModuleList([qn.Qwen3NextDecoderLayer(self.layer_config, 0)])
        self.norm = qn.Qwen3NextRMSNorm(d, eps=config.rms_norm_eps)

    def forward(self, next_embeds: torch.Tensor, hidden: torch.Tensor, rotary_emb: nn.Module,
                lm_head: nn.Module) -> torch.Tensor:
        """next_embeds [1, S, D] = embed_tokens(tokens 1..T-1); hidden [1, S, D] = the main model's
        final-norm output at positions 0..T-2. Returns logits [1, S, V]."""
        e = self.pre_fc_norm_embedding(next_embeds)
        h = self.pre_fc_norm_hidden(hidden)
        x = self.fc(torch.cat([e, h], dim=-1))
        pos = torch.arange(x.shape[1], device=x.device)[None]
        pe = rotary_emb(x, pos)
        mask = create_causal_mask(config=self.layer_config, inputs_embeds=x, attention_mask=None,
                                  past_key_values=None, position_ids=pos)
        x = self.layers[0](x, position_embeddings=pe, attention_mask=mask, position_ids=pos)
        return lm_head(self.norm(x))
