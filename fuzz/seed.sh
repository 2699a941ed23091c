#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the repository's own examples and test inputs (run once; the
# corpora, grown by bench/fuzz.sh, are committed). Needs a built `kura` (target/debug/kura).
set -euo pipefail
cd "$(dirname "$0")/.."
c=fuzz/corpus
mkdir -p "$c"/{admission_review,annotations,agent_spec,policy_file,store_file,lint_manifests,template,version_protocol}
kura=${KURA:-target/debug/kura}

cp examples/admission-review.json "$c/admission_review/example-review.json"
cp tests/fixtures/webhook-review.json "$c/admission_review/webhook-review.json"
python3 bench/hostile-gen.py tests/fixtures/webhook-review.json "$c/admission_review" 0
# The hostile bodies are large; keep the small ones as seeds.
find "$c/admission_review" -size +64k -delete

# annotations: a 0 byte then a kura.dev/secrets value; a 1 byte then name=value lines.
printf '\0- file: db.env\n  secret: /prod/user-service/db\n  format: env\n- file: tls.crt\n  secret: /prod/user-service/tls\n  key: certificate\n  mode: "0440"\n' >"$c/annotations/list"
printf '\0[{file: a, secret: /x/a, versionStage: AWSPREVIOUS}, {file: b, secret: "arn:aws:secretsmanager:ap-northeast-1:111122223333:secret:/x/b-AbCdEf", key: /a/0}]' >"$c/annotations/flow-list"
printf '\1inject=true\nsecret.db-password=/prod/user-service/db#password\nsecret.api-key=arn:aws:secretsmanager:ap-northeast-1:111122223333:secret:/prod/user-service/api-AbCdEf\n' >"$c/annotations/short"
printf '\1inject=true\nsecret.db=/x/db\nmount-path=/etc/app/secrets\ncontainers=app,worker\nagent=init-only\nrefresh-interval=5m\nfile-mode=0440\nrun-as-user=1000\nreload=http://127.0.0.1:8080/-/reload\n' >"$c/annotations/every"
printf '\1inject=true\nsecret.db=/x/db\nreload=signal:SIGHUP:nginx\n' >"$c/annotations/signal"
# Environment variables and templates (contract §7): both forms.
printf '\1inject=true\nenv.DB_PASSWORD=/prod/user-service/db#password\nenv.API_KEY=ssm:/prod/api-key\nenv-on-rotation=restart\n' >"$c/annotations/env-short"
printf '\1inject=true\nenv.TOKEN=/x/t\nenv-on-rotation=signal:SIGHUP\nsecret.a=/x/a\n' >"$c/annotations/env-signal"
printf '\0- env: DB_PASSWORD\n  secret: /prod/user-service/db\n  key: password\n- envFrom: ssm:/prod/user-service/app\n- envFrom: /prod/user-service/db#nested\n  versionStage: AWSPREVIOUS\n' >"$c/annotations/env-list"
printf '\0- file: app.properties\n  inputs: {db: /prod/user-service/db, key: "ssm:/prod/api-key"}\n  template: |\n    url=postgres://{{ db.username }}:{{ db.password | urlencode }}@db/app\n    {%% for k, v in db|items %%}{{ k }}={{ v | shell }}\n    {%% endfor %%}key={{ key | tojson }}\n  mode: "0440"\n- file: plain\n  secret: /x/p\n- env: X\n  secret: /x/p\n' >"$c/annotations/template-list"

# agent_spec: the KURA_SPEC kura writes for the example review.
"$kura" review --store file:examples/store.yaml examples/admission-review.json 2>/dev/null |
    python3 -c 'import sys, re, json
text = sys.stdin.read()
for i, m in enumerate(re.finditer(r"^\s*value: (\x27\{\"version\".*\}\x27)$", text, re.M)):
    open(sys.argv[1] + f"/spec-{i}.json", "w").write(m.group(1)[1:-1].replace("\x27\x27", "\x27"))
' "$c/agent_spec" || true
printf '{"version":"kura.dev/v1","agent":"init-only","refreshInterval":30,"mountPath":"/etc/s","reload":"signal:SIGHUP:nginx","files":[{"file":"a.env","secret":"/x/a","versionStage":"AWSPREVIOUS","format":"env","mode":"0440"}]}' >"$c/agent_spec/minimal.json"

printf '{"version":"kura.dev/v1","agent":"sidecar","refreshInterval":60,"mountPath":"/etc/s","files":[{"file":"a","secret":"/x/a","mode":"0400"}],"env":[{"name":"DB_PASSWORD","secret":"/demo/db","key":"password"},{"name":"OLD","secret":"/demo/db","versionStage":"AWSPREVIOUS"}],"envFrom":[{"secret":"ssm:/demo/app","versionStage":"blue"},{"secret":"/demo/db","key":"nested"}],"templates":[{"file":"dsn","inputs":{"db":{"secret":"/demo/db"},"k":{"secret":"ssm:/demo/k","key":"x"}},"template":"postgres://{{ db.username }}:{{ db.password | urlencode }}@db/app {{ k | b64encode }}","mode":"0440"}]}' >"$c/agent_spec/env-template.json"

# template: the source, then NUL-separated values of the inputs a, b, c, d.
printf 'user={{ a.username }}\npass={{ a.password | urlencode }}\n\0{"username":"app","password":"p/@:"}' >"$c/template/dsn"
printf '{%% for k, v in a|items %%}{{ k }}={{ v | shell }}\n{%% endfor %%}{{ b | tojson }} {{ b | b64encode }}\0{"A":"1","B":[1,2,{"c":null}]}\0plain text' >"$c/template/loop"
printf '{%% set x = a %%}{%% if x.n > 3 %%}{{ x.n * 2 }}{%% else %%}{{ range(3) | join(",") }}{%% endif %%}{{ c.missing }}\0{"n":4}\0\0{"k":1}' >"$c/template/strict"
printf '{%% macro m(v) %%}[{{ v | upper }}]{%% endmacro %%}{{ m(a) }}{{ b[0] }}{# comment #}{%% raw %%}{{ x }}{%% endraw %%}\0s\0["q"]' >"$c/template/macro"
printf '{{ a.\n' >"$c/template/syntax-error"

cp examples/policy.yaml tests/fixtures/webhook-policy-relaxed.yaml "$c/policy_file/"
cp examples/store.yaml tests/fixtures/webhook-store.yaml "$c/store_file/"
find tests/realworld -name '*.yaml' -size -64k -exec cp {} "$c/lint_manifests/" \;

# version_protocol: checks an agent sends and answers the service gives (contract §8).
printf '{"references":[{"secret":"/demo/db"},{"secret":"/demo/db","versionStage":"AWSPREVIOUS"},{"secret":"ssm:/demo/flag","versionStage":"blue"},{"secret":"arn:aws:secretsmanager:us-east-1:111122223333:secret:/demo/tls-AbCdEf","versionId":"a1b2c3d4-0000-4000-8000-000000000000"}],"agent":{"pod":"orders-7c9f","refreshIntervalSeconds":120,"lastSuccessUnix":1733420000,"consecutiveFailures":0,"errorKind":null}}' >"$c/version_protocol/check"
printf '{"references":[],"agent":{"refreshIntervalSeconds":60,"consecutiveFailures":3,"errorKind":"throttled"}}' >"$c/version_protocol/check-failing"
printf '{"versions":[{"secret":"/demo/db","current":"a1b2"},{"secret":"ssm:/demo/flag","versionStage":"blue","unknown":true}]}' >"$c/version_protocol/answer"
printf '{"message":"references outside the namespace scope","refused":["/other/db"]}' >"$c/version_protocol/refusal"
