#include "zcx/version.h"

namespace zcx {

std::string_view libraryVersion() { return ZCX_VERSION_STRING; }

}  // namespace zcx
