// zcx: zero-copy transfer of remote memory. Include this one header.
#pragma once

#include "zcx/connection.h"
#include "zcx/engine.h"
#include "zcx/memory.h"
#include "zcx/options.h"
#include "zcx/request.h"
#include "zcx/stats.h"
#include "zcx/status.h"
#include "zcx/version.h"
