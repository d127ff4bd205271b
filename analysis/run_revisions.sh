#!/usr/bin/env bash
# Persona dynamics over RLVR: add every matching revision of a hub repo to a study config (in
# natural order, before the final checkpoint), then capture each one and analyse the whole line.
#
#   analysis/run_revisions.sh CONFIG MODEL_ID [REGEX]
#   analysis/run_revisions.sh analysis/olmo2-7b-stages.toml allenai/OLMo-2-1124-7B-Instruct 'step'
#
# As a SLURM array (one checkpoint per task; capture resumes and skips finished labels), run this
# once with ONLY_CONFIG=1 to write the config, then submit
#   sbatch --array=0-N --wrap 'persona-dynamics capture STUDY --checkpoint "$(persona-dynamics \
#       config labels STUDY | sed -n "$((SLURM_ARRAY_TASK_ID+1))p")"'
# and finish with the last line of this script.
set -euo pipefail
config=${1:?usage: $0 CONFIG MODEL_ID [REGEX]}
model=${2:?usage: $0 CONFIG MODEL_ID [REGEX]}
match=${3:-.}
study="${config%.toml}-revisions.toml"

persona-dynamics revisions "$model" --match "$match" --add-to "$config" --out "$study"
[ "${ONLY_CONFIG:-0}" = 1 ] && exit 0

persona-dynamics run "$study" --stage generate --stage judge
for label in $(persona-dynamics config labels "$study"); do
    persona-dynamics capture "$study" --checkpoint "$label"
done
persona-dynamics run "$study" --stage analyze --stage compare --stage report
