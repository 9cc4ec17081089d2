"""The Celery app of the sample app's worker and scheduler, as Flask's docs name it:

celery -A hello.make_celery worker --loglevel INFO
celery -A hello.make_celery beat --loglevel INFO
"""

from hello import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
