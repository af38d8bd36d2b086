"""One process of tests/test_train_speed.py's compile-cache test: compile the fused layer (forward and
backward, CPU, a tiny random layer) for three row lengths with the compile cache in argv[1], then print what
torch.compile did (qaforge.train.compile_cache.stats) as the last line of JSON."""

import json
import sys
from pathlib import Path

import torch

from qaforge.train import compile_cache, fused_layer

compile_cache.activate(compile_cache.CompileCache(Path(sys.argv[1]), "test"))
torch.manual_seed(0)
H, INTER, HEADS, KV_HEADS, HEAD_DIM, RANK = 64, 128, 2, 1, 32, 4


def proj(out_features, in_features):
    return fused_layer.Projection(torch.randn(out_features, in_features) * 0.1, None,
                                  torch.randn(RANK, in_features, requires_grad=True),
                                  torch.randn(out_features, RANK, requires_grad=True), 2.0)


weights = fused_layer.LayerWeights(
    torch.ones(H), torch.ones(H), torch.ones(HEAD_DIM), torch.ones(HEAD_DIM), proj(HEADS * HEAD_DIM, H),
    proj(KV_HEADS * HEAD_DIM, H), proj(KV_HEADS * HEAD_DIM, H), proj(H, HEADS * HEAD_DIM), proj(INTER, H),
    proj(INTER, H), proj(H, INTER))
layer = fused_layer._compiled_layer_fn(cuda_graphs=False)
# three rows: segment counts 3, 4 (== RANK: what duck sizing tied together before), 1; lengths 100, 97, 100
for lengths in ([30, 50, 20], [40, 41, 7, 9], [100]):
    tokens = sum(lengths)
    x = torch.randn(tokens, H, requires_grad=True)
    cos, sin = torch.randn(tokens, HEAD_DIM), torch.randn(tokens, HEAD_DIM)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    bound = fused_layer._mark_token_dims(x, cos, sin, cu, max(lengths))
    layer(x, cos, sin, cu, bound, weights, torch.tensor(0.9), eps=1e-6, qk_eps=1e-6, attn_scaling=HEAD_DIM ** -0.5,
          num_heads=HEADS, num_kv_heads=KV_HEADS, head_dim=HEAD_DIM).sum().backward()
print(json.dumps(compile_cache.stats()))
