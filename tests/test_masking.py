"""MLM selection and corruption statistics over many draws."""

import numpy as np
import torch

from pretune.pretrain.objectives import IGNORE, MaskedLM, Specials

SPECIALS = Specials(vocab_size=1000, pad=0, cls=2, sep=3, mask=4, special_ids=[0, 1, 2, 3, 4])


def test_masking_statistics():
    obj = MaskedLM(SPECIALS)
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    selected = masked = random = kept = candidates = special_hits = 0
    for _ in range(40):
        items = []
        for _ in range(16):
            ids = rng.integers(5, 1000, size=128)
            ids[0], ids[-1] = 2, 3
            ids[rng.integers(1, 127, size=5)] = 3  # document separators inside packed sequences
            items.append((ids, np.ones(128, dtype=bool)))
        originals = torch.tensor(np.stack([i for i, _ in items]))
        batch = obj.collate(items, gen)
        sel = batch["labels"] != IGNORE
        special = torch.isin(originals, torch.tensor(SPECIALS.special_ids))
        special_hits += int((sel & special).sum())
        candidates += int((~special).sum())
        selected += int(sel.sum())
        assert torch.equal(batch["labels"][sel], originals[sel])
        inputs = batch["input_ids"]
        masked += int((sel & (inputs == 4)).sum())
        kept += int((sel & (inputs == originals)).sum())
        random += int((sel & (inputs != 4) & (inputs != originals)).sum())
        assert torch.equal(inputs[~sel], originals[~sel])  # unselected tokens are never touched
        assert not torch.isin(inputs[sel & (inputs != 4)], torch.tensor([0, 1, 2, 3])).any()  # random ids are regular
    assert special_hits == 0
    assert abs(selected / candidates - 0.15) < 0.01
    # a random replacement equal to the original (1 in 995) counts as kept: negligible at this tolerance
    assert abs(masked / selected - 0.8) < 0.02
    assert abs(random / selected - 0.1) < 0.02
    assert abs(kept / selected - 0.1) < 0.02


def test_masking_is_deterministic_given_the_generator():
    obj = MaskedLM(SPECIALS)
    items = [(np.arange(5, 69), np.ones(64, dtype=bool))] * 4
    a = obj.collate(items, torch.Generator().manual_seed(7))
    b = obj.collate(items, torch.Generator().manual_seed(7))
    c = obj.collate(items, torch.Generator().manual_seed(8))
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])


def test_uneven_lengths_get_an_attention_mask():
    obj = MaskedLM(SPECIALS)
    items = [(np.arange(5, 25), np.ones(20, dtype=bool)), (np.arange(5, 15), np.ones(10, dtype=bool))]
    batch = obj.collate(items, torch.Generator().manual_seed(0))
    assert batch["input_ids"].shape == (2, 20)
    assert batch["attention_mask"][1].sum() == 10
    assert (batch["labels"][1, 10:] == IGNORE).all()
