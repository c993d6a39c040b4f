from govmedia_kit.runtime import serve

from .service import build_spec, load_settings

settings = load_settings()
serve(build_spec(settings), settings)
