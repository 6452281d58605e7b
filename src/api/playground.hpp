// The HTML page served at "/": a form that builds an image URL and shows it.
#pragma once

#include <string_view>

namespace pixelgate::api {

std::string_view playground_html();

}  // namespace pixelgate::api
