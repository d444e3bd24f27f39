# syntax=docker/dockerfile:1
# The webhook image: `cache-injector serve`, as the Helm chart runs it.
#   docker build -t REGISTRY/cache-injector:0.1.0 .
# Python 3.11 on Debian 12, the versions the tests run on.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# Build stage: the project's wheel and a wheel of every dependency (all ship binary wheels, so
# no compiler is needed here either).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN pip install build==1.6.1
# The wheel needs only these (pyproject force-includes sidecar-configs/ into the package).
COPY pyproject.toml README.md ./
COPY webhook/ webhook/
COPY sidecar-configs/ sidecar-configs/
RUN python -m build --wheel --outdir /dist \
    && pip wheel --wheel-dir /wheels /dist/*.whl

# Final stage: the slim base plus the installed wheels; no build tools, no wheel files left.
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels cache-injector \
    && cache-injector --version
# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["cache-injector"]
# The chart passes its own arguments; these are the same paths, for `docker run` with the
# certificate and policy mounted there.
CMD ["serve", "--host", "0.0.0.0", "--port", "8443", \
     "--tls-cert", "/etc/cache-injector/tls/tls.crt", "--tls-key", "/etc/cache-injector/tls/tls.key", \
     "--policy", "/etc/cache-injector/policy/policy.yaml"]
