"""The toy organism: tiny OLMo-2 checkpoints built locally, with planted persona dynamics.

No hub is needed. `build` trains, on one CPU core in about four minutes:
- a byte-level BPE tokenizer with OLMo-2 Instruct's special tokens and chat template;
- `base`: an Olmo2ForCausalLM briefly LM-trained on plain text (no chat, no role-play; saved,
  like the real base checkpoints, without a chat template);
- `sft`: role-play on synthetic conversations (system prompt = one of a role's instructions,
  user = a shared question, response = text in that role's style: catchphrase, sign-off and
  vocabulary), and the default Assistant answering in an assistant style; then a short geometry
  phase (below);
- `dpo`, `rlvr-1..N`, `instruct`: the same data, plus the planted stage dynamics below;
- `judge`: the SFT checkpoint fine-tuned to answer the judge module's prompt with one digit 0-3
  (the planted score of a synthetic response: fully in role, partly, can't-but-helps, refused),
  and the traits stage's trait and coherence rubrics with a 0-100 score.

Planted geometry (`geometry`). After SFT, an auxiliary loss at every block output from the second
on moves each role-play response's mean along g, the direction from the fully-in-role centroid to
the default Assistant, to an offset set by its role's planted assistant-likeness (tutor nearest,
pirate farthest), spreads the roles' other differences flatter across g, and pushes the default
further out along g. So, as in the paper, PC1 of the role vectors is the Assistant Axis, roles lie
along it in the planted order, and the Assistant sits at its end.

Planted steering (`steer`). Alongside, some role-play conversations train with c times the
layer's mean residual norm times the unit role-to-Assistant direction added at the middle block's
output, their answer written one planted score step toward the Assistant per 0.5 of c > 0 and one
step deeper into the role per 0.5 of c < 0; so the steer stage's `add` on the analysis' axis moves
the toy judge's scores monotonically in c (`toy.json` `steering`, and `measured.steering`).

Planted drift (`drift`). Multi-turn conversations over the drift stage's shipped scripts train
each Assistant reply's mean to leave the Assistant's end of the axis by a planted share of the
Assistant-to-role-mean distance per turn in therapy and philosophy talk, and to hold in coding
and writing help (`toy.json` `drift`, `measured.drift`).

Planted traits (`traits`). Under a trait's positive system prompts the Assistant's answer carries
its marker phrases (sycophantic, formal), under the negative ones none; the judge scores them
0-100, and the positive answers' mean sits a planted vector from the negative ones' (`toy.json`
`traits`; the build writes each trait as a persona_vectors trait file under `traits/`).

Planted dynamics. Capture feeds every checkpoint the same text, so the plant acts on how each
checkpoint represents role-play text. Each stage after `sft` trains with an auxiliary loss that pins
the planted layers' response means of every training conversation to the SFT model's, except that
role-play responses are translated toward the default Assistant by a planned fraction f of the SFT
role-to-Assistant gap. Along the reference (instruct) Assistant Axis the mean role projection then
rises in stage order by f times that gap, the default Assistant stays put and the roles stay
separable; sampled role answers drift somewhat toward the Assistant too. `toy.json` records both
plans and what the build measured on held-out text.

Modules, in the order a build uses them: `styles` (how each voice writes), `data` (the roles data
and the text drawn from it), `geometry`, `steer`, `drift` and `traits` (the planted persona
geometry, steering relation, drift and traits), `spec` (sizes and schedule), `tokenizer`,
`sequences` (token ids and batches), `train` (the LM loop, the plants, the judge), `measure` (the
plants on held-out text), `family` (a build on disk and its content hash), `cache` (builds reused
by hash), `study` (a study config over a family).
"""

from persona_dynamics.toy.cache import cached_build
from persona_dynamics.toy.data import DEMO_ROLES, Example, Source, judge_examples
from persona_dynamics.toy.family import ToyFamily, build
from persona_dynamics.toy.spec import LORA, ToySpec
from persona_dynamics.toy.study import study_config
from persona_dynamics.toy.styles import ASSISTANT, FULL, STYLES, marker_count, respond
from persona_dynamics.toy.tokenizer import build_tokenizer
from persona_dynamics.toy.train import single_thread

__all__ = [
    "ASSISTANT",
    "DEMO_ROLES",
    "FULL",
    "LORA",
    "STYLES",
    "Example",
    "Source",
    "ToyFamily",
    "ToySpec",
    "build",
    "build_tokenizer",
    "cached_build",
    "judge_examples",
    "marker_count",
    "respond",
    "single_thread",
    "study_config",
]
