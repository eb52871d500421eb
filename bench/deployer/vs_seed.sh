#!/usr/bin/env bash
# Side by side: what the seed's "Redeploy" workflow does on every push, replayed as a script
# with the docker and aws CLIs, against `deployer redeploy`, on the same repository, the same
# moto and the same kind of local registry, in one run.
#
#   bench/deployer/vs_seed.sh
#
# Environment: DEPLOYER_BIN (a prebuilt deployer; default: `cargo build --release --workspace`),
# VS_SEED_CACHE (where the two flow build caches live between runs; default target/vs-seed).
#
# Setup (not measured): moto, two local registries (one per side, so each side's bytes are its
# own), a counting proxy in front of moto and of each registry (bench/deployer/
# http_count_proxy.py), a scratch clone of this repository's HEAD (the work tree, and so any
# uncommitted flows/src, is never touched), then each side's first deploy:
#   seed:     the static release binary, `docker build`, `docker push`, and its infrastructure
#             created directly with the aws CLI (cluster, task definition, service), standing
#             in for its "Deploy" workflow and CloudFormation stack;
#   deployer: `deployer up` (stacks, image, service).
# Both flow build caches are warm after this.
#
# Cases, each a new commit in the scratch clone, measured for each side:
#   a. a commit that does not change the image's inputs (a README edit);
#   b. a one-line change in the flow (a string in flows/src/runner.rs).
#
# The seed side, per push, as its workflow's steps (GitHub's runner start and checkout are not
# counted; the aws CLI's own start-up, about 0.3-0.5 s per call, is, where the workflow's
# actions call the JavaScript SDK in one process: see the per-step times printed):
#   1. configure-aws-credentials (static keys): sts GetCallerIdentity;
#   2. amazon-ecr-login: ecr GetAuthorizationToken (the token is not needed by the local
#      registry and is discarded);
#   3. build and push the image tagged by the commit: the seed's Dockerfile pip-installed a
#      Python flow; for this flow its equivalent is the production build (cargo release: one
#      codegen unit, thin LTO; FLOW_PROFILE=release scripts/build-flow-binary.sh) and
#      `docker build` of flows/Dockerfile, then `docker push`;
#   4. amazon-ecs-render-task-definition: the committed task-definition.json with the new image;
#   5. amazon-ecs-deploy-task-definition: RegisterTaskDefinition, DescribeServices,
#      UpdateService;
#   6. its commented-out `wait-for-service-stability: true`: `aws ecs wait services-stable`
#      (included, because the deployer always waits; its time is also shown on its own).
# The seed has a path filter (flow code, dependencies, Dockerfile, task-definition.json): a
# README-only push would not start it at all. Case (a) replays what it does for any push it
# does run that leaves the image's inputs as they were (a comment in deployer.yaml or in the
# task definition, a dependency bump that resolves the same): every step above, unconditionally.
#
# The deployer side: `deployer redeploy --registry` with the bundled flow's prebuild
# (scripts/build-flow-binary.sh, default FLOW_PROFILE=flow: incremental, no LTO), the
# content-addressed image (skipped when its tag is in the registry), task definition render and
# register only if it differs, UpdateService, and its rollout tracking until the deployment is
# complete.
#
# Measured per side and case: wall time; AWS API calls through the proxy, total and mutating
# (anything but Describe*/Get*/List*/BatchGet*/BatchCheck*/Validate*/Filter*, the deployer's own
# classification in src/aws.rs); bytes uploaded to the registry (request bodies through the
# registry proxy); images pushed (manifest PUTs); task definition revisions (RegisterTaskDefinition
# calls).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
# shellcheck source=scripts/lib.sh
. "$root/scripts/lib.sh"
AWSCLI_PIN='awscli==1.46.3'

work="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for reg in seed dep; do
    [ -f "$work/registry-$reg/registry.pid" ] && kill "$(cat "$work/registry-$reg/registry.pid")" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  # The seed replay's tags in the local engine (their registry is gone with $work).
  if [ -n "${reg_seed:-}" ]; then
    docker images --format '{{.Repository}}:{{.Tag}}' | grep "^$reg_seed/seed-flow:" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

venv "$root/.venv-test" "$MOTO_PIN" "$CFN_LINT_PIN" "$DUCKDB_PIN"
venv "$root/.venv-bench" "$AWSCLI_PIN"
aws() { "$root/.venv-bench/bin/aws" "$@"; }
ensure_dockerd "$work/dockerd.log"

if [ -n "${DEPLOYER_BIN:-}" ]; then
  bin="$DEPLOYER_BIN"
else
  log "building the deployer (cargo build --release --workspace)"
  cargo build -q --release --workspace
  bin="${CARGO_TARGET_DIR:-$root/target}/release/deployer"
fi
cache="${VS_SEED_CACHE:-$root/target/vs-seed}"
mkdir -p "$cache"
cache="$(cd "$cache" && pwd)"

# moto and the AWS proxy: both sides talk to moto only through the proxy.
moto_port=$(free_port)
start_moto "$root/.venv-test" "$moto_port" "$work/moto.log"
pids+=("$MOTO_PID")
wait_http "http://127.0.0.1:$moto_port/moto-api/" 60 "$work/moto.log"
proxy() { # LISTEN UPSTREAM LOG
  python3 "$root/bench/deployer/http_count_proxy.py" "$1" "$2" "$3" 2>>"$work/proxy.err" &
  pids+=($!)
}
aws_port=$(free_port)
: >"$work/aws.jsonl"
proxy "$aws_port" "$moto_port" "$work/aws.jsonl"
export AWS_ENDPOINT_URL="http://127.0.0.1:$aws_port" AWS_ACCESS_KEY_ID=testing \
  AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1 \
  AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE
wait_http "$AWS_ENDPOINT_URL/moto-api/" 30 "$work/proxy.err"

# One registry per side, each behind its own counting proxy (clients only see the proxy).
for side in seed dep; do
  port=$(free_port)
  scripts/start-registry.sh "$port" "$work/registry-$side" >/dev/null
  listen=$(free_port)
  : >"$work/reg-$side.jsonl"
  proxy "$listen" "$port" "$work/reg-$side.jsonl"
  wait_http "http://127.0.0.1:$listen/v2/" 30 "$work/proxy.err"
  printf -v "reg_$side" '%s' "127.0.0.1:$listen"
done

# The scratch repository both sides deploy from: this repository's HEAD.
repo="$work/repo"
git clone -q "$root" "$repo"
git -C "$repo" config user.email bench@example.com
git -C "$repo" config user.name bench
cat >"$repo/deployer.yaml" <<'YAML'
project: vs-deployer
data_lake: {bucket: vs-deployer-lake, prefix: crypto/}
services:
  price-stream:
    build:
      context: target/flow-image
      prebuild: scripts/build-flow-binary.sh
    environment:
      SOURCE_URL: simulated
YAML
# The seed's committed task definition (its "Deploy" workflow exported the live one).
cat >"$repo/task-definition.json" <<'JSON'
{
  "family": "seed-flow",
  "networkMode": "awsvpc",
  "requiresCompatibilities": ["FARGATE"],
  "cpu": "256",
  "memory": "512",
  "executionRoleArn": "arn:aws:iam::123456789012:role/seed-execution-role",
  "taskRoleArn": "arn:aws:iam::123456789012:role/seed-task-role",
  "containerDefinitions": [
    {
      "name": "seed-flow",
      "image": "IMAGE",
      "essential": true,
      "environment": [{"name": "SOURCE_URL", "value": "simulated"}],
      "logConfiguration": {
        "logDriver": "awslogs",
        "options": {"awslogs-group": "/ecs/seed-flow", "awslogs-region": "us-east-1", "awslogs-stream-prefix": "ecs"}
      }
    }
  ]
}
JSON
git -C "$repo" add deployer.yaml task-definition.json
git -C "$repo" commit -qm "bench: deployer.yaml and the seed's task-definition.json"

export FLOW_CARGO_TARGET_DIR_SEED="$cache/static-release" FLOW_CARGO_TARGET_DIR_DEP="$cache/static-flow"

# ---- the seed's push workflow, step by step (times per step in $work/seed-steps) ----
step() { # NAME CMD...: run and record its wall time
  local name="$1"; shift
  local s e
  s=$(date +%s.%N)
  "$@"
  e=$(date +%s.%N)
  echo "$name $(echo "$e - $s" | bc)" >>"$work/seed-steps"
}
seed_build() {
  FLOW_PROFILE=release FLOW_CARGO_TARGET_DIR="$FLOW_CARGO_TARGET_DIR_SEED" \
    "$repo/scripts/build-flow-binary.sh" "$work/seed-ctx" >>"$work/seed-build.log" 2>&1
}
seed_render() {
  python3 - "$repo/task-definition.json" "$1" "$work/task-definition.rendered.json" <<'PY'
import json, sys
src, image, out = sys.argv[1:]
td = json.load(open(src))
for c in td["containerDefinitions"]:
    if c["name"] == "seed-flow":
        c["image"] = image
json.dump(td, open(out, "w"))
PY
}
seed_push_workflow() {
  local sha image
  sha=$(git -C "$repo" rev-parse HEAD)
  image="$reg_seed/seed-flow:$sha"
  : >"$work/seed-steps"
  step "credentials(sts)" aws sts get-caller-identity --output text >/dev/null
  step "ecr-login" aws ecr get-login-password >/dev/null
  step "cargo-release" seed_build
  step "docker-build" docker build -q -t "$image" "$work/seed-ctx" >/dev/null 2>>"$work/seed-build.log"
  step "docker-push" docker push -q "$image" >/dev/null
  step "render" seed_render "$image"
  step "register" aws ecs register-task-definition --cli-input-json "file://$work/task-definition.rendered.json" \
    --query taskDefinition.taskDefinitionArn --output text >"$work/seed-td-arn"
  step "describe-services" aws ecs describe-services --cluster seed --services seed-flow >/dev/null
  step "update-service" aws ecs update-service --cluster seed --service seed-flow \
    --task-definition "$(cat "$work/seed-td-arn")" >/dev/null
  step "wait-stable" aws ecs wait services-stable --cluster seed --services seed-flow
}

deployer_redeploy() {
  (cd "$repo" && FLOW_CARGO_TARGET_DIR="$FLOW_CARGO_TARGET_DIR_DEP" \
    "$bin" redeploy --registry "$reg_dep" --json >"$work/dep-out.json" 2>"$work/dep-err.log") || {
    log "deployer redeploy failed"; tail -30 "$work/dep-err.log" >&2; exit 1
  }
}

# measure SIDE CASE CMD...: wall time and the proxies' records of CMD.
measure() {
  local side="$1" case="$2"; shift 2
  local reg_log="$work/reg-$([ "$side" = seed ] && echo seed || echo dep).jsonl"
  local a0 r0 s e
  a0=$(wc -l <"$work/aws.jsonl"); r0=$(wc -l <"$reg_log")
  s=$(date +%s.%N)
  "$@"
  e=$(date +%s.%N)
  sleep 0.3 # let the proxies flush their last lines
  python3 - "$side" "$case" "$(echo "$e - $s" | bc)" "$work/aws.jsonl" "$a0" "$reg_log" "$r0" \
    >>"$work/results.jsonl" <<'PY'
import json, sys
side, case, wall, aws_log, a0, reg_log, r0 = sys.argv[1:]
READ = ("Describe", "Get", "List", "BatchGet", "BatchCheck", "Validate", "Filter")
aws = [json.loads(l) for l in open(aws_log).read().splitlines()[int(a0):]]
# S3 (REST) has no operation name: reads are GET/HEAD.
mutating = [r for r in aws if (r["op"] and not r["op"].startswith(READ))
            or (not r["op"] and r["method"] not in ("GET", "HEAD"))]
reg = [json.loads(l) for l in open(reg_log).read().splitlines()[int(r0):]]
print(json.dumps({
    "side": side, "case": case, "wall": float(wall),
    "aws_total": len(aws), "aws_mutating": len(mutating),
    "mutating_ops": sorted({r["op"] or r["method"] + " " + r["path"] for r in mutating}),
    "revisions": sum(r["op"] == "RegisterTaskDefinition" for r in aws),
    "bytes_pushed": sum(r["bytes"] for r in reg if r["method"] in ("PUT", "PATCH", "POST")),
    "images_pushed": sum(r["method"] == "PUT" and "/manifests/" in r["path"] for r in reg),
}))
PY
}

# ---- setup: each side's first deploy (not measured) ----
log "seed: first image and infrastructure (aws CLI)"
seed_build
sha=$(git -C "$repo" rev-parse HEAD)
docker build -q -t "$reg_seed/seed-flow:$sha" "$work/seed-ctx" >/dev/null 2>>"$work/seed-build.log"
docker push -q "$reg_seed/seed-flow:$sha" >/dev/null
seed_render "$reg_seed/seed-flow:$sha"
vpc=$(aws ec2 create-vpc --cidr-block 10.9.0.0/16 --query Vpc.VpcId --output text)
subnet=$(aws ec2 create-subnet --vpc-id "$vpc" --cidr-block 10.9.0.0/24 --query Subnet.SubnetId --output text)
# The seed's service had no security group; moto's CreateService requires one.
sg=$(aws ec2 create-security-group --group-name seed --description seed --vpc-id "$vpc" --query GroupId --output text)
aws ecs create-cluster --cluster-name seed >/dev/null
aws ecs register-task-definition --cli-input-json "file://$work/task-definition.rendered.json" >/dev/null
aws ecs create-service --cluster seed --service-name seed-flow --task-definition seed-flow \
  --desired-count 1 --launch-type FARGATE \
  --network-configuration "awsvpcConfiguration={subnets=[$subnet],securityGroups=[$sg],assignPublicIp=ENABLED}" >/dev/null
aws ecs wait services-stable --cluster seed --services seed-flow

log "deployer: first up"
(cd "$repo" && FLOW_CARGO_TARGET_DIR="$FLOW_CARGO_TARGET_DIR_DEP" \
  "$bin" up --registry "$reg_dep" -q >/dev/null 2>"$work/dep-up.log") || {
  log "deployer up failed"; tail -30 "$work/dep-up.log" >&2; exit 1
}

: >"$work/results.jsonl"
: >"$work/steps.txt"
# ---- case a: a commit that changes nothing the image is built from ----
echo "bench edit $(date +%s)" >>"$repo/README.md"
git -C "$repo" commit -qam "bench: README edit"
log "case a (README edit): seed replay"
measure seed a seed_push_workflow
sed 's/^/a /' "$work/seed-steps" >>"$work/steps.txt"
log "case a (README edit): deployer redeploy"
measure deployer a deployer_redeploy

# ---- case b: a one-line change in the flow ----
marker="vs-seed $(date +%s)"
sed -i "s/\"non-string panic payload\"/\"non-string panic payload ($marker)\"/" "$repo/flows/src/runner.rs"
git -C "$repo" diff --quiet && { log "the one-line change did not apply (flows/src/runner.rs changed?)"; exit 1; }
git -C "$repo" commit -qam "bench: one-line change in the flow"
log "case b (one-line flow change): seed replay"
measure seed b seed_push_workflow
sed 's/^/b /' "$work/seed-steps" >>"$work/steps.txt"
log "case b (one-line flow change): deployer redeploy"
measure deployer b deployer_redeploy

python3 - "$work/results.jsonl" "$work/steps.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {(r["side"], r["case"]): r for r in rows}
steps = {}
for line in open(sys.argv[2]):
    case, name, secs = line.split()
    steps.setdefault(case, []).append(f"{name} {float(secs):.1f}")
names = {"a": "a. commit, image inputs unchanged (README edit)", "b": "b. one-line change in the flow"}
def ratio(d, s):
    return f"{d / s:.2f}" if s else ("0" if d == 0 else "-")
print("| case | side | wall s | AWS calls | mutating | revisions | images pushed | bytes pushed |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for case in ("a", "b"):
    for side in ("seed", "deployer"):
        r = by[(side, case)]
        label = "seed replay (docker + aws CLI)" if side == "seed" else "deployer redeploy"
        print(f"| {names[case]} | {label} | {r['wall']:.1f} | {r['aws_total']} | {r['aws_mutating']} | "
              f"{r['revisions']} | {r['images_pushed']} | {r['bytes_pushed']:,} |")
    d, s = by[("deployer", case)], by[("seed", case)]
    print(f"| {names[case]} | ratio deployer/seed | {ratio(d['wall'], s['wall'])} | "
          f"{ratio(d['aws_total'], s['aws_total'])} | {ratio(d['aws_mutating'], s['aws_mutating'])} | "
          f"{ratio(d['revisions'], s['revisions'])} | {ratio(d['images_pushed'], s['images_pushed'])} | "
          f"{ratio(d['bytes_pushed'], s['bytes_pushed'])} |")
print()
for case in ("a", "b"):
    print(f"seed steps, case {case} (s): " + ", ".join(steps.get(case, [])))
    for side in ("seed", "deployer"):
        print(f"  {side} mutating calls, case {case}: {', '.join(by[(side, case)]['mutating_ops']) or 'none'}")
print()
a_d, b_d, b_s = by[("deployer", "a")], by[("deployer", "b")], by[("seed", "b")]
ok_a = a_d["images_pushed"] == 0 and a_d["revisions"] == 0 and a_d["aws_mutating"] == 0
ok_b = b_d["wall"] <= b_s["wall"] / 2
print(f"goal a (deployer: 0 pushes, 0 revisions, 0 mutating calls): {'met' if ok_a else 'NOT met'}")
print(f"goal b (deployer wall time <= 1/2 of the seed replay's): {'met' if ok_b else 'NOT met'} "
      f"({b_d['wall']:.1f} s vs {b_s['wall']:.1f} s)")
PY
