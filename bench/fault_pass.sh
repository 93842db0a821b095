#!/bin/bash
# A new user's pass over every fault a long run meets, by hand through the CLIs (quickstart data, short runs);
# the fault suite (tests/test_faults.py) asserts the same outcomes.
# Prints, per fault, the commands and what the user sees (stderr filtered of TF/absl start-up noise).
cd "$(dirname "$0")/.."   # run as root (tmpfs and bind mounts), in the venv: bash bench/fault_pass.sh [DIR]
R=${1:-/tmp/jaxcap_fault_pass}; rm -rf $R; mkdir -p $R
TR="python train.py --config configs/quickstart.py --config.train.num_steps=60 --config.train.checkpoint_every=20 --config.train.eval_every=20 --config.train.log_every=10 --config.train.final_test_eval=False"
show() { grep -v -E "absl::InitializeLog|oneDNN|^WARNING: All log|cuda|TF-TRT|rebuild TensorFlow|computation_placer|^train: |^\s*$|E0000|W0000|I0000" "$1" | tail -${2:-4}; }
sec() { echo; echo "### $*"; }

sec "0. uninterrupted reference run"
$TR --workdir $R/ref > $R/ref.out 2> $R/ref.err; echo "exit $?"; tail -1 $R/ref.out

sec "1. SIGKILL mid-run (after ~step 35), then rerun"
$TR --workdir $R/k > /dev/null 2> $R/k1.err & P=$!
while ! grep -q '"step": 40' $R/k/metrics.jsonl 2>/dev/null; do sleep 0.2; done; kill -9 $P; wait $P 2>/dev/null
echo "killed; on disk: $(ls $R/k/checkpoints)"
$TR --workdir $R/k > $R/k.out 2> $R/k2.err; echo "rerun exit $?"; show $R/k2.err 6
python - <<PY
import json
a=[json.loads(l) for l in open("$R/ref/metrics.jsonl")]; b=[json.loads(l) for l in open("$R/k/metrics.jsonl")]
la={r["step"]:r["loss"] for r in a if "loss" in r}; lb={r["step"]:r["loss"] for r in b if "loss" in r}
steps=[r["step"] for r in b if "loss" in r]
print("metrics.jsonl steps each once:", len(steps)==len(set(steps)), "| losses equal to uninterrupted:", la==lb)
PY

sec "2. damaged latest checkpoint (truncated data file), rerun with more steps"
cp -r $R/ref $R/d; L=$(ls $R/d/checkpoints | sort -n | tail -1)
f=$(ls -S $R/d/checkpoints/$L/state/ocdbt.process_0/d/* | head -1); truncate -s 100 $f
$TR --workdir $R/d --config.train.num_steps=80 > /dev/null 2> $R/d.err; echo "exit $?"; show $R/d.err 6; echo "damaged/: $(ls $R/d/damaged 2>&1)"

sec "3. damaged best checkpoint: caption and evaluate"
cp -r $R/ref $R/b
B=$(python -c "from jaxcap import checkpoint; print(checkpoint.best('$R/b').path)"); rm $B/state/_METADATA; echo "deleted $B/state/_METADATA"
IMG=$(ls ~/.cache/jaxcap/synthetic-2000-64/Images/*.jpg | head -1)
python -m jaxcap.caption --checkpoint $R/b $IMG > $R/b.out 2> $R/b.err; echo "caption exit $?: $(cat $R/b.out)"; show $R/b.err 2
python -m jaxcap.evaluate --checkpoint $R/b --split test --beam 1 --no_meteor > $R/e.out 2> $R/e.err; echo "evaluate exit $?"; show $R/e.err 2; tail -1 $R/e.out | cut -c1-200

sec "4. no checkpoint readable"
for s in $R/b/checkpoints/*; do rm -f $s/state/_METADATA; done
python -m jaxcap.caption --checkpoint $R/b $IMG > /dev/null 2> $R/n.err; echo "caption exit $?"; show $R/n.err 1
$TR --workdir $R/b --config.train.num_steps=80 > /dev/null 2> $R/n2.err; echo "train exit $?"; show $R/n2.err 3

sec "5. two trainers on one workdir; then a killed trainer's lock"
$TR --workdir $R/two > /dev/null 2> $R/t1.err & P=$!
while [ ! -f $R/two/metrics.jsonl ]; do sleep 0.2; done
$TR --workdir $R/two > /dev/null 2> $R/t2.err; echo "second exit $?"; show $R/t2.err 1
kill -9 $P; wait $P 2>/dev/null
$TR --workdir $R/two > /dev/null 2> $R/t3.err; echo "after kill -9: exit $?"; show $R/t3.err 3

sec "6. bad config values"
for o in train.batch_size=0 train.learning_rate=-1 data.max_len=2 model.encoder=resnet7 train.regime=fast model.dtype=float8 train.eval_every=-5 train.num_steps=0; do
  $TR --workdir $R/bad --config.$o > /dev/null 2> $R/c.err; echo "--config.$o -> exit $?: $(show $R/c.err 1)"; done
echo "workdir created: $(ls -d $R/bad 2>&1)"

sec "7. Ctrl-C once (saves), then twice (exits at once)"
$TR --workdir $R/int --config.train.num_steps=100000 --config.train.eval_every=0 > $R/i.out 2> $R/i.err & P=$!
while ! grep -q '"step": 20' $R/int/metrics.jsonl 2>/dev/null; do sleep 0.2; done; kill -INT $P; wait $P; echo "exit $?"; show $R/i.err 3; echo "saved: $(ls $R/int/checkpoints)"
$TR --workdir $R/int2 --config.train.num_steps=100000 --config.train.eval_every=0 > /dev/null 2> $R/i2.err & P=$!
while ! grep -q '"step": 20' $R/int2/metrics.jsonl 2>/dev/null; do sleep 0.2; done; kill -INT $P; sleep 0.05; kill -INT $P; wait $P; echo "exit $?"; show $R/i2.err 2

sec "8. disk full during training (tmpfs of 40 MB)"
mkdir -p $R/full && mount -t tmpfs -o size=40m tmpfs $R/full && {
  $TR --workdir $R/full/w --config.train.num_steps=2000 --config.train.checkpoint_every=10 --config.train.keep_checkpoints=1000 > /dev/null 2> $R/f.err; echo "exit $?"; show $R/f.err 2
  ls $R/full/w/checkpoints | sort -n | tail -2 | tr '\n' ' '; echo; umount $R/full; }

sec "9. read-only workdir (permission): checkpoints dir made read-only via a ro bind mount"
cp -r $R/ref $R/ro && mount --bind $R/ro/checkpoints $R/ro/checkpoints && mount -o remount,bind,ro $R/ro/checkpoints && {
  $TR --workdir $R/ro --config.train.num_steps=80 > /dev/null 2> $R/ro.err; echo "exit $?"; show $R/ro.err 2; umount $R/ro/checkpoints; }
