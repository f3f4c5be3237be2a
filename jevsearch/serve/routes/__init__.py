"""The web app's routes, one :class:`fastapi.APIRouter` per area, sharing the app's
:class:`~jevsearch.serve.state.AppState` through the :data:`~jevsearch.serve.routes.common.State`
dependency (``app.state.jev``, set by :func:`jevsearch.serve.app.build_app`).

* :mod:`~jevsearch.serve.routes.html`: the search and page views (HTML);
* :mod:`~jevsearch.serve.routes.api`: the JSON API under ``/api/``;
* :mod:`~jevsearch.serve.routes.assets`: pictures, source documents and static files.
"""
