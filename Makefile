# Entry points; .ci/run calls only `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The newer daemon builds (HAProxy 3.4, Varnish 8.0, and the Go reference webhook for `make
# bench`) are found only here: a folder beside the repository by default (`make SHARED=DIR` for
# another); a relative path is relative to the repository. See docs/design.md "Layout".
SHARED ?= ../shared
export SHARED
APT_PACKAGES := varnish varnish-modules haproxy iproute2 util-linux procps curl prometheus-varnish-exporter

.PHONY: setup daemons kube cluster cluster-test wrk lint test unit e2e golden docs chart-schema run certs demo bench bench-datapath bench-objectsize bench-slots bench-churn bench-footprint clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[dev]"
	touch $@

# Debian's haproxy 2.6 / varnish 7.1 (with varnish-modules: xkey) from apt when missing, and the
# newer builds when present.
daemons:
	@missing=""; for p in varnishd haproxy ip unshare curl prometheus-varnish-exporter; do command -v $$p >/dev/null || missing=1; done; \
	dpkg -s varnish-modules >/dev/null 2>&1 || missing=1; \
	if [ -n "$$missing" ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	fi
	@# promtool (Debian's prometheus package) checks and unit-tests the chart's alert rules.
	@command -v promtool >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@# install.sh exits 141 about one run in three once all is installed: its
	@# `haproxy -v | head -1` gets SIGPIPE under pipefail. The binaries decide.
	@if [ -x "$(SHARED)/daemons/install.sh" ]; then \
		"$(SHARED)/daemons/install.sh" || { [ -x /opt/haproxy-3.4/sbin/haproxy ] && \
			[ -x /opt/varnish-8.0/sbin/varnishd ]; }; \
	else \
		echo "NOTE: $(SHARED)/daemons not found: only Debian's haproxy 2.6 / varnish 7.1 are tested"; \
	fi

# The real control plane the cluster suite and `make cluster` run: kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl and etcd of the newest and the oldest
# Kubernetes release served, built from their Go modules (kube/README.md) once per machine into
# ~/.cache/cache-injector/kube (cold: about 6 min and 100 MB of modules a release).
KUBE_RELEASES := v1.37 v1.34
kube:
	@command -v go >/dev/null || { echo "make kube: Go is needed (go.dev/doc/install)"; exit 1; }
	@for release in $(KUBE_RELEASES); do kube/build.sh $$release >/dev/null; done

LINT_PATHS := webhook tests bench

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy
	$(BIN)/python -m webhook.tools.chartschema --check
	$(BIN)/python -m tests.chart.lint

# The cluster suite runs after the rest, not beside it: its control planes would take the CPU
# that the e2e scenarios running in the background measure against (memory levelling, drains).
test: setup daemons kube lint
	$(BIN)/pytest --ignore=tests/kube
	$(BIN)/pytest tests/kube

unit: setup
	$(BIN)/pytest -q -m "not e2e and not cluster"

e2e: setup daemons
	$(BIN)/pytest -q -m e2e

# The cluster suite alone: the real control plane, the chart installed by Helm (root).
cluster-test: setup daemons kube
	$(BIN)/pytest -q tests/kube

# A local control plane with the chart installed and the webhook from this checkout as its
# Service's endpoints; prints the kubeconfig to use. Ctrl-C stops it (root).
cluster: setup daemons kube
	$(BIN)/python -m tests.kube.cluster $(CLUSTER_ARGS)

# One injected pod with 3 backend pods, run for real (root): HIT/MISS, which pod answered,
# the hit ratio from its own metrics and its access log lines.
demo: setup daemons
	$(BIN)/python -m tests.e2e.demo

golden: setup daemons
	REFRESH_GOLDEN=1 $(BIN)/pytest -q tests/golden

# The chart's values.schema.json embeds the policy schema: regenerate it with the docs.
docs: setup
	$(BIN)/python -m webhook.tools.docs
	$(BIN)/python -m webhook.tools.chartschema

# values.schema.json: the policy part and every description, from the code and values.yaml.
chart-schema: setup
	$(BIN)/python -m webhook.tools.chartschema

certs: setup
	@[ -f certs/tls.crt ] || $(BIN)/cache-injector certs generate --service cache-injector --namespace cache-injector --out certs --host 127.0.0.1 --host localhost

run: setup
	@if $(BIN)/cache-injector serve --help >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory certs && \
		$(BIN)/cache-injector serve --host 127.0.0.1 --port 8443 --tls-cert certs/tls.crt --tls-key certs/tls.key; \
	else echo "server not built yet"; fi

# Prints numbers, asserts nothing: admission latency/throughput vs the Go reference webhook.
bench: setup daemons wrk
	$(BIN)/python -m bench.admission $(BENCH_ARGS)

# Prints numbers, asserts nothing: the injected pod's data path (start, idle memory, HIT and
# MISS latency vs a plain varnishd) on both daemon generations; root and wrk needed.
bench-datapath: setup daemons wrk
	$(BIN)/python -m bench.datapath

bench-objectsize: setup daemons
	$(BIN)/python -m bench.objectsize

# Prints numbers, asserts nothing: the default pod's idle footprint per container as if it ran
# alone on the node (daemons and their libraries from private copies: other haproxy/varnishd
# on the machine share no page with it), on both generations; root needed. ARGS="--shared"
# for the installed daemons (as e2e), ARGS="--env K=V" for a cache-varnish variable.
bench-footprint: setup daemons
	$(BIN)/python -m bench.footprint $(ARGS)

# Prints numbers, asserts nothing: cache-haproxy's memory per max-backends slot and DNS answer
# sizes per Service size, on both generations; root needed.
bench-slots: setup daemons
	$(BIN)/python -m bench.slots

# Prints numbers, asserts nothing: cache-varnish's memory curve under a stream of unique tiny
# objects (default pod, Varnish 8.0, 8 min; root and wrk). ARGS="--env MALLOC_CONF=narenas:64"
# for an allocator variant, ARGS="--hits --base-env K= --env K=V" for a variant's HIT cost.
bench-churn: setup daemons wrk
	$(BIN)/python -m bench.churn $(ARGS)

# Judges, not only prints: one hour of unique small objects at 85 % of the rate the machine
# sustains plus a working set of 300 URLs, on the default pod (root and wrk). PASS when
# cache-varnish levels off below 60 % of its limit, the working set keeps hitting (>= 99 % each
# minute) and nothing failed; not part of `make test`. ARGS="--generation oldest" for
# HAProxy 2.6 / Varnish 7.1, ARGS="--minutes 5" for a trial. See bench/results/README.md.
.PHONY: soak
soak: setup daemons wrk
	$(BIN)/python -m bench.soak $(ARGS)

# The load generator of both benchmarks (Debian's wrk, built with TLS).
wrk:
	@command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null)

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
