"""Write a tiny Llama GGUF file (random fp32 weights, a byte-level vocabulary) for tests.

Built with the ``gguf`` package's writer, so tests need no downloaded file. The vocabulary is
the 256 byte symbols of a byte-level BPE, one merge and an end-of-text token: enough for transformers
to convert both the model and the tokenizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HIDDEN, LAYERS, HEADS, KV_HEADS, FFN, CONTEXT = 32, 1, 4, 2, 64, 128


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins a byte-level BPE uses for the bytes 0..255."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def write_tiny_gguf(path: Path, seed: int) -> dict[str, np.ndarray]:
    """Write ``path``; return its tensors (name -> fp32 array, GGUF shapes reversed as numpy)."""
    import gguf

    tokens = byte_symbols() + ["Ġt", "<|endoftext|>"]
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(LAYERS)
    w.add_context_length(CONTEXT)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(HIDDEN // HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * 257 + [3])  # NORMAL bytes and one merge, one CONTROL token
    w.add_token_merges(["Ġ t"])
    w.add_bos_token_id(vocab - 1)
    w.add_eos_token_id(vocab - 1)
    shapes = {"token_embd.weight": (vocab, HIDDEN), "output_norm.weight": (HIDDEN,),
              "output.weight": (vocab, HIDDEN)}
    hd = HIDDEN // HEADS
    for i in range(LAYERS):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (HIDDEN,), f"blk.{i}.ffn_norm.weight": (HIDDEN,),
            f"blk.{i}.attn_q.weight": (HIDDEN, HIDDEN), f"blk.{i}.attn_k.weight": (KV_HEADS * hd, HIDDEN),
            f"blk.{i}.attn_v.weight": (KV_HEADS * hd, HIDDEN), f"blk.{i}.attn_output.weight": (HIDDEN, HIDDEN),
            f"blk.{i}.ffn_gate.weight": (FFN, HIDDEN), f"blk.{i}.ffn_up.weight": (FFN, HIDDEN),
            f"blk.{i}.ffn_down.weight": (HIDDEN, FFN),
        }
    tensors = {}
    for name, shape in shapes.items():
        t = (1.0 + 0.1 * rng.standard_normal(shape) if len(shape) == 1
             else 0.2 * rng.standard_normal(shape)).astype(np.float32)
        tensors[name] = t
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors
