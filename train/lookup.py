"""The look-up loss: one attention head learns where to look.

"Where is the red circle?" is answered by finding the red circle's image token and reading its
cell off it; "Which image has a red circle?" by finding it among two pictures' tokens and reading
which picture it is in. The tiny model learnt the reading, but the finding formed late or not at
all: its heads attended to the empty cells, to both shapes of a row at the second word of
"top left", or to a whole picture (docs/training.md, "Seeing first" and "Looking things up").

This loss says where to look, with head LOOKUP_HEAD of two layers:

    layer LOOKUP_LAYER  every position that predicts an answer about one object (Sample.grounding:
                        colour, shape, size, position and multi-image questions) attends to that
                        object's image token (to all of them when it appears more than once); in
                        pre-training, so does every position that predicts a fact caption's words
                        about its object ("The square is| small and blue, at the top right",
                        "The red circle is in the| second image", Sample.text_grounding)
    layer NAMING_LAYER  every image token of a picture the prompt names ("The second image:
                        <image>", Sample.image_names) attends to the word naming it, so that what
                        the look-up reads off an object says which picture it is in

The loss is -log of the head's attention weight on the targets, averaged over all such queries of
the global batch. The heads are ordinary ones: what they carry, and every other head, is left to
the LM loss. Nothing is added to the model; the checkpoint's layout does not change.

Finding the object is half of a multi-image answer; the other half is carrying which picture it is
in from the object's tokens to the answer. With a `readout` (a linear layer the trainer keeps
beside the vision probes, never saved in the checkpoint), every look-up of layer LOOKUP_LAYER
whose targets lie in one picture of several is also a readout query: from the input of layer
READOUT_LAYER at the query, the readout predicts which picture that is (cross-entropy, added with
the same denominator). The same readout reads each image token of a named picture at the input of
LOOKUP_LAYER, so what the naming head writes there is the picture's name in the readout's terms
and the look-up head has only to copy it. Without it the head could find the object and carry
nothing of its picture; on some draws it did, and multi-image answers stayed at chance
(docs/training.md, "Which picture").

The weights are computed beside the model's own attention, from each layer's input (captured by a
forward pre-hook) with the layer's projections and rotary embedding, for the queried positions
only: a few dozen rows per batch. tests/test_train.py holds them equal to the model's eager attention.
"""

from __future__ import annotations

import torch
from torch import nn

from vlm_edge.common.errors import InputError
from vlm_edge.common.tokenizer import IMAGE_TOKEN_INDEX

LOOKUP_LAYER = 1  # the second layer: the first gathers the object's name from the question
NAMING_LAYER = 0  # image tokens look at the word that names their picture ("The second image: <image>")
LOOKUP_HEAD = 0
READOUT_LAYER = LOOKUP_LAYER + 1  # the picture readout reads its input (the final norm's output if it is the last)
READOUT_PICTURES = 4  # the readout's classes: the picture an object is in, of up to this many
PICTURE_READOUT = True  # the trainer gives the look-up loss a picture readout (off: no readout)
NAMING_READOUT = True  # the readout also reads each named picture's tokens (at LOOKUP_LAYER's input)
# Answers that repeat words of their prompt ("Repeat after me: red cat") look at those words, with the
# head of LOOKUP_LAYER; off in the recipe (an experiment: docs/training.md, "Which picture")
COPY_LOOKUPS = False
# More layers whose head LOOKUP_HEAD learns the answers' look-ups too (the same queries and targets); none in
# the recipe: layer 2 as well was tried and answered worse (docs/training.md, "How much SFT the recipe needs")
EXTRA_LOOKUP_LAYERS: tuple[int, ...] = ()

# (layer, query, targets): at `query`, head LOOKUP_HEAD of `layer` should attend to `targets`. A
# position is an index into the sample's input_ids (a text token) or (image, token) of its images.
Lookup = tuple[int, "int | tuple[int, int]", tuple["int | tuple[int, int]", ...]]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def expanded_positions(ids: list[int], image_tokens: int) -> tuple[list[int], list[int]]:
    """(position of each id after every <image> became `image_tokens` positions, first position of
    each image) for one sample's input_ids."""
    positions, images, at = [], [], 0
    for t in ids:
        positions.append(at)
        if t == IMAGE_TOKEN_INDEX:
            images.append(at)
            at += image_tokens
        else:
            at += 1
    return positions, images


class LookupLoss:
    """Captures attention layers' inputs during the model's forward and scores their look-ups.
    Holds no parameters: the projections are the layers' own."""

    def __init__(self, llm: nn.Module, layers: tuple[int, ...] | None = None, head: int = LOOKUP_HEAD,
                 readout: nn.Module | None = None):
        layers = layers or (NAMING_LAYER, LOOKUP_LAYER, *EXTRA_LOOKUP_LAYERS)
        self.readout = readout  # hidden -> READOUT_PICTURES logits, or None
        decoder_layers = llm.get_decoder().layers
        if max(layers) >= len(decoder_layers):
            raise InputError(f"the look-up loss needs attention layers {layers}; the LLM has {len(decoder_layers)}")
        config = llm.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        if not 0 <= head < self.heads:
            raise InputError(f"the look-up loss needs head {head}; the layers have {self.heads}")
        self.head = head
        self.attention = {layer: decoder_layers[layer].self_attn for layer in layers}
        self._captured: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for layer, attention in self.attention.items():
            attention.register_forward_pre_hook(self._capturer(layer), with_kwargs=True)
        self._readout_input: torch.Tensor | None = None
        if readout is not None:  # the normalized residual after layer LOOKUP_LAYER: what the next layer reads
            norm = (decoder_layers[READOUT_LAYER].input_layernorm if READOUT_LAYER < len(decoder_layers)
                    else llm.get_decoder().norm)
            norm.register_forward_hook(self._capture_readout_input)
        self.armed = False

    def _capture_readout_input(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.armed:
            self._readout_input = output

    def _capturer(self, layer: int):
        def capture(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self.armed:
                hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                cos, sin = kwargs["position_embeddings"]
                self._captured[layer] = (hidden, cos, sin)
        return capture

    def __call__(self, input_ids: list[list[int]], lookups: list[list[Lookup]], image_tokens: int,
                 count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """After the model's forward over `input_ids` (armed): ((sum over look-ups of -log the
        attention on their targets + the readout's cross-entropy) / count, mean attention on the
        targets here or None, the readout's accuracy here or None)."""
        captured, self._captured = self._captured, {}
        readout_input, self._readout_input = self._readout_input, None
        by_layer: dict[int, tuple[list[int], list[int], list[list[int]]]] = {}
        # the picture readout's queries, (row, position, picture): answers (read after LOOKUP_LAYER) and
        # named pictures' image tokens (read at LOOKUP_LAYER's input, after NAMING_LAYER)
        answers: list[tuple[int, int, int]] = []
        tokens: list[tuple[int, int, int]] = []
        for b, (ids, sample) in enumerate(zip(input_ids, lookups)):
            positions, images = expanded_positions(ids, image_tokens)

            def at(ref) -> int:
                return positions[ref] if isinstance(ref, int) else images[ref[0]] + ref[1]

            for layer, query, targets in sample:
                rows, queries, wanted = by_layer.setdefault(layer, ([], [], []))
                rows.append(b)
                queries.append(at(query))
                wanted.append([at(t) for t in targets])
                if len(images) < 2:
                    continue
                pictures = {t[0] for t in targets if not isinstance(t, int)}
                if layer == LOOKUP_LAYER and isinstance(query, int) and len(pictures) == 1:
                    answers.append((b, at(query), pictures.pop()))
                elif layer == NAMING_LAYER and not isinstance(query, int) and NAMING_READOUT:
                    tokens.append((b, at(query), query[0]))
        total, on, read = count.new_zeros(()), [], None
        if self.readout is not None and answers:
            if readout_input is None:
                raise RuntimeError("the picture readout saw no forward pass")
            loss, right = self._read(readout_input, answers)
            total, read = total + loss, right.float().mean().cpu()
        if self.readout is not None and tokens:
            total = total + self._read(captured[LOOKUP_LAYER][0], tokens)[0]
        for layer, (rows, queries, wanted) in sorted(by_layer.items()):
            if layer not in captured:
                raise RuntimeError(f"the look-up loss saw no forward pass of layer {layer}")
            on_target = self._on_target(*captured[layer], self.attention[layer], rows, queries, wanted)
            total = total - on_target.sum()
            on.append(on_target.detach().exp())
        if not on:
            return total, None, read
        return total / count.clamp(min=1), torch.cat(on).mean().cpu(), read

    def _read(self, hidden: torch.Tensor, queries: list[tuple[int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The readout at (row, position) of `hidden` [B, L, D]: (cross-entropy summed over the
        queries against their pictures, whether each was right)."""
        batch, length, _ = hidden.shape
        rows, positions, pictures = (torch.tensor(c, device=hidden.device) for c in zip(*queries))
        pick = torch.zeros(len(queries), batch * length, device=hidden.device, dtype=hidden.dtype)
        pick[torch.arange(len(queries)), rows * length + positions] = 1  # one-hot rows: see _on_target
        logits = self.readout(pick @ hidden.reshape(batch * length, -1)).float()
        loss = nn.functional.cross_entropy(logits, pictures, reduction="sum")
        return loss, (logits.argmax(-1) == pictures).detach()

    def _on_target(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attention: nn.Module,
                   rows: list[int], queries: list[int], targets: list[list[int]]) -> torch.Tensor:
        """log of the head's attention weight on each query's targets (summed over them) [n].

        Rows are picked with one-hot products, not indexing: the backward of an index with
        repeated rows accumulates in an order that varies between runs, and training must
        give the same weights every time (train/numerics.py)."""
        batch, length, _ = hidden.shape
        n = len(rows)
        b = torch.tensor(rows, device=hidden.device)
        p = torch.tensor(queries, device=hidden.device)
        pick = torch.zeros(n, batch * length, device=hidden.device, dtype=hidden.dtype)
        pick[torch.arange(n), b * length + p] = 1
        group = self.heads // self.kv_heads
        dim, kv = self.head_dim, self.head // group
        q = attention.q_proj(pick @ hidden.reshape(batch * length, -1))[:, self.head * dim:(self.head + 1) * dim]
        q = q * cos[b, p] + rotate_half(q) * sin[b, p]  # [n, dim]; cos and sin carry no gradient
        k = attention.k_proj(hidden)[..., kv * dim:(kv + 1) * dim]  # [B, L, dim]
        k = k * cos + rotate_half(k) * sin
        own = torch.zeros(n, batch, device=hidden.device)
        own[torch.arange(n), b] = 1
        scores = torch.einsum("nd,bld,nb->nl", q.float(), k.float(), own) * dim ** -0.5  # [n, L]
        position = torch.arange(length, device=hidden.device)
        logp = scores.masked_fill(position[None, :] > p[:, None], float("-inf")).log_softmax(-1)
        wanted = torch.zeros(n, length, dtype=torch.bool, device=hidden.device)
        for i, t in enumerate(targets):
            wanted[i, t] = True
        return logp.masked_fill(~wanted, float("-inf")).logsumexp(-1)


def lookup_count(lookups: list[list[Lookup]] | None) -> int:
    return 0 if lookups is None else sum(len(sample) for sample in lookups)
