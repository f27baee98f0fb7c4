# syntax=docker/dockerfile:1
# Build: docker build -t product-analytics-proxy .
# Run:   docker run -p 8080:8080 -e PROXY_HOST=0.0.0.0 -e GITLAB_URL=... -e CUBE_API_BASE_URL=... -e CUBE_API_KEY=... product-analytics-proxy

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proxy ./proxy
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home proxy
COPY --from=build /opt/venv /opt/venv
COPY config/proxy.example.toml /etc/product-analytics-proxy/proxy.toml
ENV PATH="/opt/venv/bin:$PATH" \
    PROXY_CONFIG=/etc/product-analytics-proxy/proxy.toml \
    PROXY_HOST=0.0.0.0 \
    PROXY_PORT=8080 \
    PYTHONUNBUFFERED=1
USER proxy
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ.get(\"PROXY_PORT\", \"8080\")}/-/liveness', timeout=2)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["product-analytics-proxy"]
