"""Real SGLang host pools on CPU, for the integration tests (needs SGLang).

Device pools are built on CPU and their buffer info handed to SGLang's own
host-pool classes, as ../README's SGLang notes describe. Pools are kept tiny:
SGLang refuses host allocations that would leave less than 10 GiB free.
"""

import os

import torch

LAYERS = 3
HEADS = 2
HEAD_DIM = 16
PAGE = 4
DEVICE_TOKENS = 64


def setup_sglang_runtime():
    """Process-wide SGLang state the host pools and controller expect."""
    from sglang.srt.runtime_context import get_parallel

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.getcwd(), ".torch-ext"))
    get_parallel().override_permanently(
        tp_rank=0, tp_size=1, pp_rank=0, pp_size=1, attn_dcp_size=1, attn_dcp_rank=0
    )


def mha_device_pool(page=PAGE):
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    return MHATokenToKVPool(
        DEVICE_TOKENS, page, torch.bfloat16, HEADS, HEAD_DIM, LAYERS,
        device="cpu", enable_memory_saver=False, enable_alt_stream=False,
    )


def mla_device_pool(page=PAGE):
    from sglang.srt.mem_cache.memory_pool import MLATokenToKVPool

    return MLATokenToKVPool(
        DEVICE_TOKENS, page, torch.bfloat16, kv_lora_rank=32, qk_rope_head_dim=16,
        layer_num=LAYERS, device="cpu", enable_memory_saver=False,
    )


def host_pool(kind, layout, page=PAGE):
    """An SGLang host pool of `kind` ("mha" or "mla") with `layout`."""
    if kind == "mha":
        from sglang.srt.mem_cache.pool_host.mha import MHATokenToKVPoolHost as cls

        dev = mha_device_pool(page)
        extra = {}
    else:
        from sglang.srt.mem_cache.pool_host.mla import MLATokenToKVPoolHost as cls

        dev = mla_device_pool(page)
        extra = {"target_layer_num": LAYERS}
    info = dev.get_device_pool_infos()[0].buffer_info
    pool = cls(
        info, 2.0, 0, page, layout, pin_memory=False, device="cpu",
        device_capacity_tokens=DEVICE_TOKENS, start_layer=0, end_layer=LAYERS - 1, **extra,
    )
    return dev, pool


def fill_pages(pool, pages, seed):
    """Writes distinct bytes into each host page `p` (indices p*page...)."""
    gen = torch.Generator().manual_seed(seed)
    for p in pages:
        flat = pool.get_data_page(p * pool.page_size, flat=True)
        data = torch.randint(-1000, 1000, flat.shape, generator=gen).to(flat.dtype)
        pool.set_from_flat_data_page(p * pool.page_size, data)


def page_bytes(pool, page_index):
    return pool.get_data_page(page_index * pool.page_size, flat=True).clone()
