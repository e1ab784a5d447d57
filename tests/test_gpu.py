"""The same exactness on CUDA, and CPU and GPU graphs agreeing (skipped where there is no GPU)."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import save_hf_model
from tiny_dictionaries import random_transcoder

from clew.attribution import check_graph, trace
from clew.models.loading import load_folder

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")


@pytest.mark.parametrize(
    "family,kind", [("llama", "plt-jumprelu"), ("gemma3", "clt-relu"), ("gpt2", "skip-topk")]
)
def test_cuda_graph_is_exact_and_matches_cpu(tmp_path, family, kind):
    save_hf_model(family, tmp_path)
    cpu = load_folder(tmp_path, tokenizer=False, device="cpu")
    gpu = load_folder(tmp_path, tokenizer=False, device="cuda")
    tc_cpu = random_transcoder(cpu.cfg, kind)
    tc_gpu = random_transcoder(cpu.cfg, kind).to("cuda")
    prompt = torch.randint(0, 211, (11,), generator=torch.Generator().manual_seed(5))
    g_cpu = trace(cpu, tc_cpu, prompt, progress=False)
    g_gpu = trace(gpu, tc_gpu, prompt, progress=False)
    assert torch.equal(g_cpu.features, g_gpu.features)
    scale = g_cpu.adjacency.abs().max()
    assert (g_cpu.adjacency - g_gpu.adjacency).abs().max() < 1e-4 * scale
    check = check_graph(gpu, tc_gpu, g_gpu, max_sources=None)
    assert check.max_edge_error < 1e-4 and check.max_sum_error < 1e-4
    budget = trace(gpu, tc_gpu, prompt, max_feature_nodes=16, batch_size=4, progress=False)
    assert budget.n_features == 16
