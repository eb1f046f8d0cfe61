"""BERT-style masking for masked-language-model training on DNA tokens."""

from __future__ import annotations

from collections.abc import Collection

import torch

# The label of a position that takes no loss: the one definition of the project (kernels,
# heads and the training loop import it). It lives with the data because labels are made
# here, and `data` imports no model code; -100 is torch's cross_entropy default.
IGNORE_INDEX = -100


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: Collection[int],
    generator: torch.Generator | None = None,
    mask_prob: float = 0.15,
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select ``mask_prob`` of the maskable tokens and corrupt them BERT-style.

    Of the selected positions 80% become ``mask_id``, 10% a random non-special token and
    10% stay unchanged, so the model cannot learn that only [MASK] positions matter.
    Special tokens and padding (``attention_mask`` False) are never selected. With BPE this
    is whole-token masking: every BPE token is a unit, so no token is ever half-masked.

    Random numbers are drawn on ``generator``'s device (CPU by default) with a fixed number
    of draws per call, so results are reproducible from the generator state.

    Returns:
        ``(masked_ids, labels)``: ``labels`` holds the original id at selected positions and
        ``IGNORE_INDEX`` (-100) everywhere else.
    """
    if input_ids.dtype != torch.long:
        raise TypeError(f"input_ids must be a LongTensor, got {input_ids.dtype}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be within [0, 1], got {mask_prob}")
    device = input_ids.device
    special_set = set(special_ids)
    specials = torch.tensor(sorted(special_set), dtype=torch.long, device=device)
    replaceable = torch.ones(vocab_size, dtype=torch.bool)
    in_vocab = [i for i in special_set if 0 <= i < vocab_size]
    replaceable[torch.tensor(in_vocab, dtype=torch.long)] = False
    candidates = replaceable.nonzero().squeeze(1)
    if len(candidates) == 0:
        raise ValueError("every token id is special; nothing can serve as a random replacement")
    maskable = ~torch.isin(input_ids, specials)
    if attention_mask is not None:
        maskable &= attention_mask.to(device=device, dtype=torch.bool)

    draw_device = generator.device if generator is not None else torch.device("cpu")
    shape = input_ids.shape
    select_draw = torch.rand(shape, generator=generator, device=draw_device).to(device)
    action_draw = torch.rand(shape, generator=generator, device=draw_device).to(device)
    random_pick = torch.randint(len(candidates), shape, generator=generator, device=draw_device)
    random_ids = candidates.to(draw_device)[random_pick].to(device)

    selected = maskable & (select_draw < mask_prob)
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    masked = input_ids.clone()
    masked[selected & (action_draw < 0.8)] = mask_id
    replace = selected & (action_draw >= 0.8) & (action_draw < 0.9)
    masked[replace] = random_ids[replace]
    return masked, labels
