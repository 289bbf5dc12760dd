from celery import Celery

app = Celery("proj", broker="memory://")
app.conf.task_acks_late = True


@app.task(name="imports.fetch_feed", time_limit=120, max_retries=10,
          autoretry_for=(ConnectionError,))
def fetch_feed(url):
    ...
