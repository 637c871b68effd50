# One image for every wardstream app service (migrate, simulator, worker, sink, notifier):
# docker-compose.yml picks the subcommand. Kafka, PostgreSQL and Grafana use their own images.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WARDSTREAM_STATE_DIR=/var/lib/wardstream/state

WORKDIR /app

# Dependencies first (cached while only the code changes): install the declared ones from
# pyproject.toml, then the project itself without touching them again.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Editable install: the code stays in /app, where sql/migrations and grafana/ are found
# (wardstream.config.REPO_ROOT is the parent of the installed package).
COPY . .
RUN pip install --no-deps -e . \
 && useradd --create-home --uid 10001 wardstream \
 && mkdir -p /var/lib/wardstream/state \
 && chown -R wardstream /var/lib/wardstream

USER wardstream
ENTRYPOINT ["wardstream"]
CMD ["--help"]
