# guard: a slim image running `guard serve` as a non-root user.
#
# The image carries no configuration and no policies: mount yours at /etc/guard, with guard.yaml
# naming the policies folder (e.g. `policies: /etc/guard/policies`), your IdP under `issuers:`
# and a shared store. Started without it, guard stops with one line naming the missing file.
# It listens on every interface (GUARD_LISTEN_HOST), so development mode (no issuers and no sso,
# or dev_issuer: true: development tokens anyone can mint) is refused at start-up: that mode
# listens on loopback only.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY requirements/runtime.lock ./requirements/
COPY guard ./guard
# guard's dependencies as locked (with hashes: what CI tested), then guard itself without resolving again
RUN pip install --no-cache-dir --prefix=/install --require-hashes -r requirements/runtime.lock \
 && pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11-slim
RUN useradd --system --create-home --home-dir /srv/guard --uid 10001 guard
COPY --from=build /install /usr/local
WORKDIR /srv/guard
USER 10001:10001
ENV GUARD_CONFIG=/etc/guard/guard.yaml \
    GUARD_LISTEN_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"
ENTRYPOINT ["guard"]
CMD ["serve"]
