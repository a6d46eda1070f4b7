"""The throughput levers change how fast a step runs, never what it computes: length-grouped batches keep
every item once per epoch, the loss on the supervised span equals the loss on all logits, the response
log-probs from the last N + 1 positions equal those of the full forward, fused AdamW takes the same step."""
import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import OPTConfig, OPTForCausalLM

from conftest import ROOT
from dataset.sft import SFTDataset, sft_collate
from model.generate import position_ids_for, response_logprobs
from model.loss import lm_loss, token_logprobs
from model.peft import apply_peft
from model.peft.prompt_tuning import text_logits
from model.memory import checkpoint_layers, frozen_model
from trainer.data_order import group_by_length
from trainer.optim import adamw
from trainer.sft import SFTTrainer, supervised_span

from conftest import tiny_model, trainer_configs
from utils import keep_freed_memory


@pytest.fixture(scope="module")
def data(tok):
    return SFTDataset("ds/sft_train.jsonl", tok, max_len=96, limit=300, verbose=False)


def epoch_batches(trainer, n_batches):
    return [trainer.get_batch(i) for i in range(n_batches)]


@pytest.mark.parametrize("world_batch", [8, 12])
def test_group_by_length_is_a_permutation_with_similar_lengths_per_batch(world_batch):
    lengths_all = torch.randint(5, 200, (1000,)).tolist()
    order = torch.randperm(1000, generator=torch.Generator().manual_seed(0))
    grouped = group_by_length(order, [lengths_all[int(i)] for i in order], world_batch, torch.Generator().manual_seed(1))
    assert sorted(grouped.tolist()) == list(range(1000))  # every item exactly once
    spread = lambda o: sum(max(b) - min(b) for b in ([lengths_all[int(i)] for i in o[s: s + world_batch]]
                                                      for s in range(0, 1000, world_batch)))
    assert spread(grouped) < 0.2 * spread(order)
    again = group_by_length(order, [lengths_all[int(i)] for i in order], world_batch, torch.Generator().manual_seed(1))
    assert torch.equal(grouped, again)  # deterministic in its generator


def test_grouped_trainer_sees_every_item_once_per_epoch_with_less_padding(tok, data, tmp_path):
    per_epoch = len(data) // 10  # batch 10 divides the 300 items
    counts = {}
    for group in (False, True):
        trainer = SFTTrainer(tiny_model(), tok, data, None, None, run_config={}, max_new_tokens=4,
                             eval_batch_size=64, judge=None,
                             **trainer_configs(tmp_path / str(group), batch_size=10, group_by_length=group))
        batches = epoch_batches(trainer, per_epoch)
        seen = sorted(tuple(ids) for b in batches for ids, m in zip(b["input_ids"].tolist(), b["attention_mask"].tolist())
                      for ids in [[t for t, k in zip(ids, m) if k]])
        assert seen == sorted(tuple(it["input_ids"]) for it in data.items)
        counts[group] = sum(b["attention_mask"].numel() for b in batches)
        second = trainer.get_batch(per_epoch)  # the next epoch is a new order
        assert not torch.equal(second["input_ids"], batches[0]["input_ids"])
    assert counts[True] < 0.8 * counts[False]  # padded tokens per epoch


@pytest.mark.parametrize("peft", ["none", "prompt_tuning"])
def test_loss_on_the_supervised_span_equals_the_full_loss(tok, data, peft):
    model = tiny_model()
    if peft != "none":
        model = apply_peft(model, peft, num_virtual_tokens=4)
    model.eval()
    batch = sft_collate(data.items[:16], tok.pad_token_id)
    keep = supervised_span(batch["labels"])
    assert 1 < keep < batch["labels"].size(1)  # the shipped prompts share a span without labels
    with torch.no_grad():
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        expected = lm_loss(text_logits(full, batch["input_ids"]), batch["labels"])
        trainer = SFTTrainer.__new__(SFTTrainer)
        trainer.model = model
        got, _ = trainer.compute_loss(batch)
    assert torch.allclose(got, expected, atol=1e-6), (got, expected)
    assert supervised_span(torch.full((2, 5), -100)) == 2  # no labels at all: a minimal span, loss NaN-free path


@pytest.mark.parametrize("bf16", [False, True])
def test_lm_head_in_chunks_gives_the_ordinary_loss_and_gradients_without_full_logits(tok, data, tmp_path, bf16):
    """LM_HEAD_CHUNK: the SFT loss from the final hidden states, the LM head and cross-entropy taken 7
    supervised tokens at a time (several chunks), equals the ordinary loss, and so does every gradient (the
    tied embedding's included), with dropout 0.1 and in bf16 autocast, and so does the held-out loss; the
    head itself never runs on the batch and is back in place afterwards."""
    batch = sft_collate(data.items[:12], tok.pad_token_id)
    runs = []
    for chunk in (0, 7):
        trainer = SFTTrainer(tiny_model(dropout=0.1), tok, data, data, None, run_config={}, max_new_tokens=4,
                             eval_batch_size=64, judge=None, lm_head_chunk=chunk,
                             **trainer_configs(tmp_path / str(chunk), batch_size=12))
        assert trainer.lm_head_chunk == chunk
        model = trainer.unwrap(trainer.model)
        assert model.get_input_embeddings().sparse == bool(chunk)  # direct_tied_grad with the chunked head
        head, calls = model.lm_head, []
        head.register_forward_hook(lambda *_: calls.append(1))
        torch.manual_seed(3)  # the same dropout masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = trainer.compute_loss(batch)
        loss.backward()
        assert model.lm_head is head and len(calls) == (0 if chunk else 1)
        with torch.no_grad():
            held_out = trainer.eval_loss()  # no gradients: the loss alone, chunked the same way
        runs.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, held_out))
    (plain, plain_grads, plain_eval), (chunked, chunked_grads, chunked_eval) = runs
    assert chunked_eval == pytest.approx(plain_eval, rel=1e-5)
    tol = dict(rtol=2e-2, atol=1e-4) if bf16 else dict(rtol=1e-5, atol=1e-7)
    assert torch.allclose(chunked, plain, **tol), (chunked, plain)
    for name, grad in plain_grads.items():
        assert torch.allclose(chunked_grads[name], grad, **tol), name
    assert plain_grads["model.decoder.embed_tokens.weight"].abs().sum() > 0


@pytest.mark.parametrize("bf16", [False, True])
def test_chunked_lm_head_loss_never_makes_a_tensor_of_all_tokens_by_the_vocabulary(bf16):
    """linear_cross_entropy's forward and backward: no tensor that any op makes holds N x V elements or more
    (N supervised tokens, V the vocabulary), only chunks of `chunk` rows; and its loss and gradients are the
    full logits' (the weight's gradient summed chunk by chunk)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from model.loss import linear_cross_entropy

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in (out if isinstance(out, (tuple, list)) else [out]):
                if isinstance(t, torch.Tensor):
                    Largest.largest = max(Largest.largest, t.numel())
            return out

    torch.manual_seed(0)
    n, h, v, chunk = 40, 16, 300, 8
    hidden = torch.randn(1, n + 1, h, requires_grad=True)
    weight = torch.randn(v, h, requires_grad=True)
    labels = torch.randint(0, v, (1, n + 1))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        with Largest():
            loss = linear_cross_entropy(hidden, weight, labels, chunk=chunk)
            loss.backward()
        assert Largest.largest == v * h < n * v  # the weight (and its gradient) at most: chunks of 8 x 300 logits
        chunked = (loss.detach(), hidden.grad.clone(), weight.grad.clone())
        hidden.grad = weight.grad = None
        full = lm_loss(hidden @ weight.T, labels)
    full.backward()
    tol = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-5, atol=1e-7)
    for got, want in zip(chunked, (full.detach(), hidden.grad, weight.grad)):
        assert torch.allclose(got.float(), want.float(), **tol)
    # a scaled loss (gradient accumulation divides it) scales both gradients; unscaled they come back as they are
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        (linear_cross_entropy(hidden, weight, labels, chunk=chunk) / 4).backward()
    assert torch.equal(hidden.grad * 4, chunked[1]) and torch.equal(weight.grad * 4, chunked[2])


def test_lm_head_chunk_auto_only_for_large_vocabularies_and_never_through_a_wrapper(tok, data, tmp_path, capsys):
    from model.memory import chunkable_lm_head, resolve_lm_head_chunk
    from utils import ConfigError

    big = OPTForCausalLM(OPTConfig(vocab_size=50272, hidden_size=16, word_embed_proj_dim=16, ffn_dim=16,
                                   num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16))
    assert resolve_lm_head_chunk("auto", big) == 256 and resolve_lm_head_chunk("auto", tiny_model()) == 0
    assert "vocabulary 512 < 8192" in capsys.readouterr().out
    assert resolve_lm_head_chunk("256", big) == 256 and resolve_lm_head_chunk(0, big) == 0
    with pytest.raises(ConfigError, match="LM_HEAD_CHUNK='many'"):
        resolve_lm_head_chunk("many", big)
    # peft's wrapper reaches the base model's head by attribute lookup: swapping it there would change nothing
    lora = apply_peft(tiny_model(), "lora", r=4, alpha=8, targets=("q_proj", "v_proj"))
    assert chunkable_lm_head(tiny_model()) is not None and chunkable_lm_head(lora) is None
    trainer = SFTTrainer(lora, tok, data, None, None, run_config={}, max_new_tokens=4, eval_batch_size=64,
                         judge=None, lm_head_chunk=64, **trainer_configs(tmp_path, batch_size=4))
    assert trainer.lm_head_chunk == 0  # the ordinary head and loss


@pytest.mark.parametrize("bf16", [False, True])
def test_response_logprobs_from_the_last_positions_equal_the_full_forward(bf16):
    model = tiny_model(dropout=0.1).eval()
    sequences = torch.randint(4, 512, (6, 30))
    mask = torch.ones_like(sequences)
    mask[:3, :5] = 0  # left padding
    P = 20
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        full = model(input_ids=sequences, attention_mask=mask, position_ids=position_ids_for(mask)).logits[:, P - 1: -1]
        expected = token_logprobs(full.float() / 0.7, sequences[:, P:])
        got, entropy = response_logprobs(model, sequences, mask, P, temperature=0.7)
        # LM_HEAD_CHUNK: the head a few tokens at a time, from the final hidden states
        chunked, chunked_entropy = response_logprobs(model, sequences, mask, P, temperature=0.7, chunk=7)
    assert torch.equal(got, expected)
    # the entropy of the temperature-scaled distribution, beside the log-probs
    reference = torch.distributions.Categorical(logits=full.float() / 0.7).entropy()
    assert torch.allclose(entropy, reference, atol=1e-4)
    assert reference.min() > 0.1  # not a degenerate distribution
    tol = 1e-2 if bf16 else 1e-5
    assert torch.allclose(chunked, expected, atol=tol) and torch.allclose(chunked_entropy, reference, atol=tol)


@pytest.mark.parametrize("chunk", [0, 7])
def test_chunked_response_logprobs_keep_nothing_of_the_vocabulary_size_for_backward(chunk, monkeypatch):
    """With a chunk, no tensor that backward keeps has the vocabulary as its last dimension except the LM head's
    own matrix (the full path keeps the (B, N, V) log-softmax: the test sees it), and the gradients of the
    log-probs match the full path's, with the backward pass's products over slices of the vocabulary."""
    monkeypatch.setattr("model.loss.VOCAB_SLICE", 100)  # 512 tokens: 5 slices of 100 and one of 12
    model = tiny_model().eval()
    V = model.config.vocab_size
    sequences = torch.randint(4, V, (4, 24))
    mask = torch.ones_like(sequences)
    kept = []

    def pack(t):
        kept.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs, _ = response_logprobs(model, sequences, mask, 16, temperature=0.7, chunk=chunk)
    vocab_sized = [s for s in kept if V in s and s != tuple(model.lm_head.weight.shape)]
    assert (vocab_sized == []) == (chunk > 0), vocab_sized
    logprobs.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    response_logprobs(model, sequences, mask, 16, temperature=0.7, chunk=0)[0].sum().backward()
    assert all(torch.allclose(a, p.grad, atol=1e-5) for a, p in zip(grads, model.parameters()))


class _CountProducts(TorchDispatchMode):
    """Counts the matrix products (aten.addmm: nn.Linear's) run under it."""
    def __init__(self):
        super().__init__()
        self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.products += func.overloadpacket is torch.ops.aten.addmm
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode,bf16,lora,how", [("train", False, False, True), ("eval", True, True, True),
                                                ("train", True, False, "selective"), ("eval", False, True, "selective")])
def test_gradient_checkpointing_recomputes_each_layer_and_gives_the_same_gradients(mode, bf16, lora, how):
    """With GRADIENT_CHECKPOINTING each layer runs again in the backward pass (so its activations were not
    kept), in training mode with dropout 0.1 (SFT, RM: the replay draws the same dropout masks) and in eval
    mode (PPO learns there), in bf16 autocast and with a LoRA actor; the loss and every gradient are the
    plain run's. 'selective' replays the layer too, but none of its matrix products: their outputs were kept."""
    ids = torch.randint(4, 512, (4, 24))
    runs = []
    for checkpointed in (False, how):
        model = tiny_model(dropout=0.1)
        if lora:
            model = apply_peft(model, "lora", r=4, alpha=8, targets=("q_proj", "v_proj"))
        if checkpointed:
            assert checkpoint_layers(model, selective=checkpointed == "selective") == 2
        model.train(mode == "train")
        calls = []
        for attention in model.modules():  # inside each layer: it runs whenever its layer does, replays included
            if type(attention).__name__ == "OPTAttention":
                attention.register_forward_pre_hook(lambda *_: calls.append(1))
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), _CountProducts() as forward:
            loss = model(input_ids=ids, labels=ids).loss
        with _CountProducts() as backward:
            loss.backward()
        with torch.no_grad():
            model(input_ids=ids)  # no gradients: runs as before, once per layer
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        runs.append((loss.detach(), grads, len(calls), forward.products, backward.products))
    (loss0, grads0, calls0, forward0, replayed0), (loss1, grads1, calls1, forward1, replayed1) = runs
    assert calls0 == 2 + 2 and calls1 == 2 * 2 + 2  # 2 layers: forward (+ replay) + the no-grad forward
    # the backward pass of a Linear runs mm, not addmm: only a replayed forward runs addmm (the layers' products;
    # the LM head has no bias and is not replayed). A replay stops once it has what the backward needs (in eval
    # mode fc2's output is not needed: torch's early stop)
    assert forward0 == forward1 >= 2 * 6 and replayed0 == 0, (forward0, forward1, replayed0)
    assert (replayed1 == 0) if how == "selective" else (forward1 - 2 <= replayed1 <= forward1), replayed1
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and all(torch.allclose(grads0[n], grads1[n], atol=1e-6) for n in grads0)


def test_fused_adamw_takes_the_plain_step():
    model = tiny_model()
    twin = copy.deepcopy(model)
    fused = adamw(model, 1e-2, 0.01)
    assert fused.defaults["fused"]
    plain = torch.optim.AdamW([{"params": [p for p in twin.parameters() if p.dim() >= 2], "weight_decay": 0.01},
                               {"params": [p for p in twin.parameters() if p.dim() < 2], "weight_decay": 0.0}], lr=1e-2)
    ids = torch.randint(4, 512, (4, 16))
    for m, opt in ((model, fused), (twin, plain)):
        for _ in range(3):
            m(input_ids=ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad()
    for (name, a), b in zip(model.named_parameters(), twin.parameters()):
        if "k_proj.bias" not in name:  # its true gradient is 0 (softmax ignores a shift): Adam steps on rounding noise
            assert torch.allclose(a, b, atol=1e-6), name
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), tiny_model().parameters()))  # it moved


def test_bf16_auto_turns_on_only_for_wide_models_on_native_bf16_hardware(monkeypatch, capsys):
    import trainer.dist as dist
    from utils import ConfigError, configure

    wide = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=256, word_embed_proj_dim=256, ffn_dim=64, num_hidden_layers=1,
                                    num_attention_heads=2, max_position_embeddings=16))
    monkeypatch.setattr(dist, "fast_bf16", lambda: "the CPU has avx512_bf16")
    assert dist.resolve_bf16("auto", wide) is True
    assert dist.resolve_bf16("auto", tiny_model()) is False  # 32 wide: bf16 gains nothing there
    assert "hidden size 32 < 256" in capsys.readouterr().out
    monkeypatch.setattr(dist, "fast_bf16", lambda: "")
    assert dist.resolve_bf16("auto", wide) is False
    assert dist.resolve_bf16("True", wide) is True and dist.resolve_bf16(False, wide) is False
    with pytest.raises(ConfigError, match="BF16='yes'"):
        dist.resolve_bf16("yes", wide)
    namespace = {"BF16": "auto"}  # the CLI's text and a replayed run_config's bool both reach resolve_bf16
    assert configure(namespace, ["--bf16", "True"])["BF16"] == "True"


def test_profile_categories_put_each_op_where_the_throughput_table_says():
    """bench/profile_stages.py: the vocabulary matmul is the LM head, other matmuls are the linear layers,
    flash attention and softmax are attention, log-softmax and NLL are the cross-entropy, AdamW and the
    clipping norm are the optimizer, autocast's copies are casts."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from profile_stages import category

    vocab = 50272
    assert category("aten::mm", [[2048, 768], [768, vocab]], vocab) == "LM head (vocabulary matmul)"
    assert category("aten::addmm", [[3072], [2048, 768], [768, 3072]], vocab) == "matmuls (linear layers)"
    assert category("aten::_scaled_dot_product_flash_attention_for_cpu", [], vocab) == "attention"
    assert category("aten::_log_softmax", [[8, vocab]], vocab) == "cross-entropy / log-softmax"
    assert category("aten::nll_loss_backward", [], vocab) == "cross-entropy / log-softmax"
    assert category("aten::_fused_adamw_", [], vocab) == "optimizer (AdamW, clipping)"
    assert category("aten::linalg_vector_norm", [], vocab) == "optimizer (AdamW, clipping)"
    assert category("aten::_to_copy", [], vocab) == "dtype casts and copies"
    assert category("aten::bernoulli_", [], vocab) == "elementwise, norms, dropout"


KEEP_FREED = """
import resource, sys, torch
from utils import keep_freed_memory
applied = keep_freed_memory(sys.argv[1] != "off", int(sys.argv[2]))
def faults(mib):  # minor page faults of ten tensors of `mib` MiB, each freed before the next
    for _ in range(10):  # until the heap has grown to hold it (it takes glibc a few rounds)
        x = torch.zeros(mib << 18)
        del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        x = torch.zeros(mib << 18)  # the same block ten times, like a step's logits or an embedding's gradient
        del x
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(applied, faults(64), faults(8))
"""


def test_kept_freed_memory_is_reused_without_faulting_its_pages_in_again():
    """KEEP_FREED_MEMORY: a freed 64 MiB block is allocated again without faulting its pages in; off, every
    round faults all of it. KEEP_FREED_BELOW_MIB=32: the 64 MiB block is handed back and faulted in each
    time again, an 8 MiB one is kept and reused."""
    def faults(mode, below_mib=0):
        out = subprocess.run([sys.executable, "-c", KEEP_FREED, mode, str(below_mib)], cwd=ROOT, capture_output=True,
                             text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
        return out[0] == "True", int(out[1]), int(out[2])

    applied, big, small = faults("on")
    if not applied:
        pytest.skip("not glibc: keep_freed_memory changes nothing here")
    every_time = pytest.approx(10 * 16384, rel=0.2)  # 64 MiB in 4 KiB pages, ten times
    assert faults("off")[:2] == (False, every_time)
    assert big <= 3 * 16384 and small <= 3 * 2048  # reused: at most 3 of the 10 rounds still grew the heap
    applied, big, small = faults("on", 32)
    assert applied and big == every_time and small <= 3 * 2048


MALLINFO = """
import ctypes
class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
"""  # the heap's size and what is allocated in it (libc.mallinfo2()), for the scripts below

FRAGMENTS = MALLINFO + """
import random, sys, torch
from utils import keep_freed_memory
if not keep_freed_memory(True, int(sys.argv[1])):
    sys.exit(3)
random.seed(0)
kept = []
for _ in range(40):  # a step: a big block whose size follows the batch's length, and a small one that outlives it
    big = torch.ones((random.randint(33, 96) << 20) // 4)
    kept.append(torch.ones(16384 * random.randint(1, 4)))  # (a kernel cache entry for the new shape, a metric)
    del big
info = libc.mallinfo2()
print(info.arena >> 20, info.uordblks >> 20)  # the heap, and what is allocated in it, MiB
"""


def test_big_blocks_handed_back_keep_the_heap_from_growing_with_changing_shapes():
    """KEEP_FREED_BELOW_MIB=32 against a heap that grows: with every freed block kept, big blocks of changing
    sizes (a batch's logits, its activations) split by small long-lived ones (kernels cached for each new shape)
    leave holes too small for the next one, and the heap grows step after step (SFT on Alpaca before the kernel
    caches were bounded: 5.7 GB of RSS after 80 steps, docs/throughput.md); with blocks of 32 MiB and more in
    mappings of their own, it stays near what is allocated."""
    def heap(below_mib):
        out = subprocess.run([sys.executable, "-c", FRAGMENTS, str(below_mib)], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if out.returncode == 3:
            pytest.skip("not glibc: keep_freed_memory changes nothing here")
        assert out.returncode == 0, out.stderr
        arena, allocated = map(int, out.stdout.split())
        return arena - allocated  # free but kept, MiB

    # free but kept: more than the largest block (96 MiB), in holes the next block did not fit (173 or 763 MiB
    # here, by where the heap lands), against next to nothing
    assert heap(0) > 128
    assert heap(32) < 32


KERNEL_CACHES = MALLINFO + """
import os, sys, torch
from utils import bound_kernel_caches
os.environ.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None); os.environ.pop("LRU_CACHE_CAPACITY", None)
if sys.argv[1] != "default":
    print(bound_kernel_caches(int(sys.argv[1])), file=sys.stderr)
weight = torch.randn(256, 256, requires_grad=True)
def step(rows):  # a bf16 product and its backward pass, as a batch of `rows` tokens makes them
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.nn.functional.linear(torch.randn(rows, 256), weight)
    out.float().sum().backward()
step(8)
before = libc.mallinfo2().uordblks
for rows in range(9, 109):  # 100 new shapes
    step(rows)
print((libc.mallinfo2().uordblks - before) >> 10)  # KiB still allocated after them
"""


def test_bounded_kernel_caches_keep_less_for_each_new_shape():
    """bound_kernel_caches (every training script, before its first bf16 product): the CPU kernels built for new
    shapes of bf16 products are kept up to 8 here, so 100 new shapes leave little allocated; at the libraries'
    default (1,024 entries) each keeps its kernels. Where bf16 products do not build cached kernels (no oneDNN
    path), nothing grows either way and the test says so."""
    def kept_kib(entries):
        out = subprocess.run([sys.executable, "-c", KERNEL_CACHES, entries], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    unbounded = kept_kib("default")
    if unbounded < 16 << 10:
        pytest.skip(f"bf16 products keep no kernels per shape here ({unbounded} KiB for 100 shapes)")
    assert kept_kib("8") < unbounded / 10


def test_bound_kernel_caches_leaves_a_capacity_the_user_set(monkeypatch):
    from utils import bound_kernel_caches
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "2048")
    monkeypatch.delenv("LRU_CACHE_CAPACITY", raising=False)
    assert bound_kernel_caches(128) == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "2048", "LRU_CACHE_CAPACITY": "128"}


def test_kept_freed_below_mib_is_checked():
    from utils import ConfigError
    for enabled in (True, False):  # checked even where it has no effect
        for bad in (-1, 33, True):
            with pytest.raises(ConfigError, match="KEEP_FREED_BELOW_MIB"):
                keep_freed_memory(enabled, bad)


def mapped(path) -> bool:
    with open("/proc/self/maps") as f:
        return any(str(path) in line for line in f)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_frozen_model_lets_go_of_the_mapped_checkpoint_and_computes_the_same(tmp_path):
    """from_pretrained maps model.safetensors; after frozen_model no tensor points into that mapping any more
    (so the pages its cast read are not kept resident), the tied LM head is still the embedding, and the
    outputs under bf16 autocast are bit-identical to the cast weights'."""
    torch.manual_seed(0)
    OPTForCausalLM(OPTConfig(vocab_size=96, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                             max_position_embeddings=64, word_embed_proj_dim=64)).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    model = OPTForCausalLM.from_pretrained(tmp_path).eval()
    reference = copy.deepcopy(model)
    ids = torch.randint(0, 96, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(input_ids=ids).logits
    if not mapped(weights):
        pytest.skip("this transformers copies the checkpoint instead of mapping it")
    frozen_model(model)
    assert not mapped(weights)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    assert model.model.decoder.layers[0].fc1.weight.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(input_ids=ids).logits, expected)


def test_chunked_response_logprobs_on_a_llama_model(monkeypatch):
    """The chunked log-probs on a Llama-architecture model (SmolLM2's: tied embeddings, positions passed): the
    same log-probs, entropies and gradients as its full-vocabulary head, left padding included."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from model.memory import chunkable_lm_head

    monkeypatch.setattr("model.loss.VOCAB_SLICE", 128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    assert chunkable_lm_head(model) is model.lm_head and model.lm_head.weight is model.model.embed_tokens.weight
    sequences = torch.randint(3, 600, (4, 20))
    mask = torch.ones_like(sequences)
    mask[:2, :4] = 0  # left padding
    results = []
    for chunk in (0, 9):
        model.zero_grad()
        logprobs, entropy = response_logprobs(model, sequences, mask, 12, temperature=0.7, chunk=chunk)
        logprobs.sum().backward()
        results.append((logprobs.detach(), entropy, [p.grad.clone() for p in model.parameters()]))
    (full, full_entropy, full_grads), (chunked, chunked_entropy, chunked_grads) = results
    assert torch.allclose(chunked, full, atol=1e-5) and torch.allclose(chunked_entropy, full_entropy, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(chunked_grads, full_grads))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_draws_bernoulli_masks_scaled_as_torchs(dtype):
    """model/dropout.py: a million draws keep 1 - p of the elements (and pairs of neighbours, which share one
    64-bit draw, independently), kept values are x times 1 / (1 - p) rounded to x's dtype exactly as torch's
    dropout makes them, the gradient passes through the same mask and scale, and a seed gives its mask again."""
    import torch.nn.functional as F
    from model.dropout import dropout

    x = (torch.rand(1000, 1000) + 1).to(dtype).requires_grad_()  # no zeros: a zero out means dropped
    torch.manual_seed(0)
    y = dropout(x, 0.1)
    keep = y != 0
    assert abs(keep.float().mean().item() - 0.9) < 1.5e-3  # 5 standard deviations of 1e6 draws
    pairs = keep.view(-1, 2)
    assert abs((pairs[:, 0] & pairs[:, 1]).float().mean().item() - 0.81) < 2e-3
    scale = torch.ones((), dtype=dtype).div_(0.9)
    assert torch.equal(y, x.detach() * scale * keep)
    theirs = F.dropout(x, 0.1, True)  # torch's own: the same value wherever both keep an element
    both = (theirs != 0) & keep
    assert both.float().mean() > 0.75 and torch.equal(theirs[both], y[both])
    grad = torch.randn_like(y)
    y.backward(grad)
    assert torch.equal(x.grad, grad * scale * keep)
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.1), y)
    assert not torch.equal(dropout(x, 0.1), y)  # the next draw: another mask
    for off in (dict(training=False), dict(p=0.0)):
        assert torch.equal(dropout(x, **{"p": 0.1, **off}), x)
    from model.dropout import _SCRATCH
    dropout(torch.ones(10), 0.1)  # the random bits of every draw go into one buffer, the largest so far
    assert len(_SCRATCH) == 1 and _SCRATCH[x.device].numel() >= x.numel() // 2


@pytest.mark.parametrize("how", [False, True, "selective"])
def test_fast_dropout_runs_in_trained_layers_only_and_checkpoint_replays_draw_the_same_masks(how):
    """fast_dropout_layers: a layer in training mode with gradients draws its dropout (2 per OPT layer) with
    model/dropout.py; in eval mode or without gradients, torch's (none at all in eval mode); and with
    activation checkpointing (full or selective) over it, the replayed layers draw the same masks: the loss and
    every gradient are those of the run without checkpointing. A model without dropout is left alone."""
    import model.dropout as fast

    calls = []
    apply = fast._Dropout.apply

    def counted(*args):
        calls.append(1)
        return apply(*args)
    ids = torch.randint(4, 512, (4, 24))
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fast._Dropout, "apply", counted)
        for checkpointed in (False, how):
            model = tiny_model(dropout=0.1, attention_dropout=0.0)
            assert fast.fast_dropout_layers(model) == 2
            if checkpointed:
                checkpoint_layers(model, selective=checkpointed == "selective")
            calls.clear()
            torch.manual_seed(1)
            loss = model(input_ids=ids, labels=ids).loss
            forward_calls = len(calls)
            loss.backward()
            assert forward_calls == 4 and len(calls) == 4 + (4 if checkpointed else 0)  # a replay draws again
            runs.append((loss.detach(), {n: p.grad for n, p in model.named_parameters()}))
            calls.clear()
            with torch.no_grad():
                model(input_ids=ids)
            model.eval()
            model(input_ids=ids, labels=ids).loss.backward()
            assert not calls
    (loss0, grads0), (loss1, grads1) = runs
    assert torch.equal(loss0, loss1)
    assert all(torch.allclose(grads0[n], grads1[n], atol=1e-6) for n in grads0)
    assert fast.fast_dropout_layers(tiny_model(dropout=0.0)) == 0


class _BigResults(TorchDispatchMode):
    """The ops run under it that make a new tensor of at least `size` elements."""
    def __init__(self, size):
        super().__init__()
        self.size, self.ops = size, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if (isinstance(out, torch.Tensor) and out.layout == torch.strided and out.numel() >= self.size and not any(
                isinstance(a, torch.Tensor) and a.layout == torch.strided
                and a.untyped_storage().data_ptr() == out.untyped_storage().data_ptr()
                for a in args)):  # dense, not a view of an input, not in place
            self.ops.append(func.overloadpacket.__name__)
        return out


@pytest.mark.parametrize("loss_fn", ["cross_entropy", "token_logprobs"])
def test_direct_tied_grad_sums_the_tied_matrix_gradients_in_place(loss_fn):
    """direct_tied_grad: the chunked LM head's gradient goes straight into the tied matrix's .grad and the
    embedding's (now sparse) gradient is added there in place, over two accumulated backward passes in bf16
    autocast (the log-probs at temperature 0.7): every gradient is the ordinary path's, but no dense embedding gradient and no out-of-place sum of
    the two (each a vocabulary-by-width matrix) is ever made. An untied head is left as it is."""
    from model.loss import linear_cross_entropy, linear_token_logprobs
    from model.memory import direct_tied_grad, hidden_and_head

    ids = torch.randint(4, 512, (4, 24))
    runs = []
    for direct in (False, True):
        model = tiny_model()
        if direct:
            assert direct_tied_grad(model)
        vocab_by_width = model.lm_head.weight.numel()
        with _BigResults(vocab_by_width) as big:
            for _ in range(2):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    hidden, head = hidden_and_head(model, dict(input_ids=ids))
                    if loss_fn == "cross_entropy":
                        loss = linear_cross_entropy(hidden, head.weight, ids, 16)
                    else:
                        loss = -linear_token_logprobs(hidden[:, :-1], head.weight, ids[:, 1:], 0.7, 16)[0].mean()
                loss.backward()
        weight = model.get_input_embeddings().weight
        assert not weight.grad.is_sparse and weight.grad.abs().sum() > 0
        runs.append(({n: p.grad for n, p in model.named_parameters()}, big.ops))
    (plain, plain_ops), (direct, direct_ops) = runs
    assert all(torch.allclose(direct[n], plain[n], rtol=1e-5, atol=1e-7) for n in plain)
    assert "embedding_dense_backward" in plain_ops and "add" in plain_ops  # what it spares
    assert "embedding_dense_backward" not in direct_ops and "add" not in direct_ops, direct_ops
    untied = tiny_model()
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    assert not direct_tied_grad(untied) and not untied.get_input_embeddings().sparse
