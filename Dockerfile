# syntax=docker/dockerfile:1
# The proxy's image: the locked dependencies in their own layer, then the package; no configuration inside.
#
# Build: docker build --build-arg VERSION=$(python -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])') \
#          --build-arg REVISION=$(git rev-parse HEAD) --build-arg SOURCE=<the repository's URL> -t product-analytics-proxy .
# Run:   docker run -p 8080:8080 -v "$PWD/proxy.toml:/etc/product-analytics-proxy/proxy.toml:ro" product-analytics-proxy
#        (the file sets [server] host = "0.0.0.0"; config/proxy.example.toml lists every setting; or set
#        PROXY_CONFIG="" and give every setting as PROXY_<SECTION>__<KEY>)
# Python 3.11: the cheapest per request of 3.11, 3.12 and 3.13 (bench/NOTES.md, instruction counts).

FROM python:3.11-slim AS build
RUN python -m venv /opt/venv
# the dependencies, exactly as locked (every file's hash checked): a layer of their own, rebuilt only when the lock changes
COPY requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/requirements.lock
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY proxy ./proxy
# the revision in the package too: /-/metrics' build_info names it
ARG REVISION=unknown
RUN printf '%s\n' "${REVISION}" > proxy/REVISION && /opt/venv/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim
ARG VERSION=0.0.0
ARG REVISION=unknown
# where the source lives (the repository's address: --build-arg SOURCE=https://...)
ARG SOURCE=""
LABEL org.opencontainers.image.title="product-analytics-proxy" \
      org.opencontainers.image.description="GitLab's Product analytics API in front of Cube, as a fast sidecar" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 proxy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin proxy
COPY --from=build /opt/venv /opt/venv
# PATH only: no setting of the proxy's is set here, so nothing overrides a mounted file. PROXY_CONFIG names where
# the file is mounted (set it to "" to configure from the environment alone).
ENV PATH="/opt/venv/bin:$PATH" \
    PYTHONUNBUFFERED=1 \
    PROXY_CONFIG=/etc/product-analytics-proxy/proxy.toml
USER 10001:10001
EXPOSE 8080
# cheap: reads the same settings the proxy runs with and asks /-/liveness on the configured port
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 CMD ["product-analytics-proxy", "--health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["product-analytics-proxy"]
